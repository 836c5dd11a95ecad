package main

import (
	"testing"
)

// The configuration docker-compose.yml gives asyncgate parses, with the primary, both replicas
// and the metrics endpoint Prometheus scrapes.
func TestDeployConfigParses(t *testing.T) {
	cfg, _, err := parseConfig([]string{"--config", "../../deploy/asyncgate.conf"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Databases["app"] == "" || len(cfg.Replicas["app"]) != 2 {
		t.Fatalf("databases %v, replicas %v: want app with two replicas", cfg.Databases, cfg.Replicas)
	}
	if cfg.MetricsListen != "0.0.0.0:9127" || cfg.AuthFile != "/etc/asyncgate/userlist.txt" {
		t.Fatalf("metrics_listen %q, auth_file %q", cfg.MetricsListen, cfg.AuthFile)
	}
}
