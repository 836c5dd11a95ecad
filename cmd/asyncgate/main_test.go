package main

import "testing"

func TestLogHandler(t *testing.T) {
	for format, ok := range map[string]bool{"text": true, "json": true, "xml": false, "": false} {
		h, err := logHandler(format, nil)
		if (err == nil) != ok || (h != nil) != ok {
			t.Errorf("logHandler(%q) = %v, %v; want ok=%v", format, h, err, ok)
		}
	}
}

func TestParseOnOff(t *testing.T) {
	for v, want := range map[string]bool{"on": true, "ON": true, "true": true, "1": true, "off": false, "no": false} {
		if got, err := parseOnOff(v); err != nil || got != want {
			t.Errorf("parseOnOff(%q) = %v, %v; want %v", v, got, err, want)
		}
	}
	if _, err := parseOnOff("maybe"); err == nil {
		t.Error(`parseOnOff("maybe") accepted`)
	}
}
