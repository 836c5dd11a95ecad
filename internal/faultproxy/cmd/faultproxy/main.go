// Command faultproxy runs a fault-injecting TCP proxy in front of a server,
// for shell scripts and the benchmark suite:
//
//	faultproxy -target 127.0.0.1:5432 -spike-p 0.02 -spike 50ms
//
// It prints "listening <addr>" on stdout once it accepts connections, so a
// script started with -listen 127.0.0.1:0 can learn the port, and runs until
// SIGINT or SIGTERM. Counters go to stderr on exit.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/asyncgate/asyncgate/internal/faultproxy"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "faultproxy:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	target := flag.String("target", "", "host:port to forward to (required)")
	var f faultproxy.Faults
	flag.DurationVar(&f.Delay, "delay", 0, "latency added to each response chunk")
	flag.Float64Var(&f.SpikeP, "spike-p", 0, "probability that a response chunk gets -spike on top")
	flag.DurationVar(&f.Spike, "spike", 0, "extra latency of a spike")
	flag.DurationVar(&f.UpDelay, "up-delay", 0, "latency added to each client→target chunk")
	flag.IntVar(&f.BandwidthDown, "bandwidth-down", 0, "target→client bytes/s per connection (0: unlimited)")
	flag.Uint64Var(&f.Seed, "seed", 0, "seed for the spike draws (0: random)")
	flag.BoolVar(&f.Blackhole, "blackhole", false, "forward and answer nothing (a hung server)")
	flag.BoolVar(&f.Refuse, "refuse", false, "reset every new connection (a dead server)")
	flag.Parse()
	if *target == "" || flag.NArg() > 0 {
		flag.Usage()
		return errors.New("-target host:port is required and there are no arguments")
	}

	// Subscribe before printing the address, so a script that signals us
	// as soon as it has read it does not kill us mid-setup.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)

	p, err := faultproxy.Listen(*listen, *target)
	if err != nil {
		return err
	}
	p.Set(f)
	fmt.Printf("listening %s\n", p.Addr())

	<-sig
	err = p.Close()
	st := p.Stats()
	fmt.Fprintf(os.Stderr, "faultproxy: accepted %d refused %d resets %d bytes up %d down %d delayed chunks %d\n",
		st.Accepted, st.Refused, st.Resets, st.BytesUp, st.BytesDown, st.DelayedChunks)
	return err
}
