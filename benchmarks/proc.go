package benchmarks

import (
	"github.com/asyncgate/asyncgate/benchmarks/procstat"
)

// procTracker measures the processes under test over one slot: CPU time between start and stop,
// and resident memory at every sample.
type procTracker struct {
	procs  []Process
	before []procstat.Sample
	res    []ProcessResult
}

func startProcs(procs []Process) *procTracker {
	p := &procTracker{procs: procs, before: make([]procstat.Sample, len(procs)), res: make([]ProcessResult, len(procs))}
	for i, pr := range procs {
		p.res[i] = ProcessResult{Name: pr.Name, PID: pr.PID}
		s, err := procstat.Read(pr.PID)
		if err != nil {
			p.res[i].Error = err.Error()
			continue
		}
		p.before[i] = s
		p.noteRSS(i, s.RSSBytes)
	}
	return p
}

func (p *procTracker) noteRSS(i int, rss int64) {
	r := &p.res[i]
	r.RSSMaxBytes = max(r.RSSMaxBytes, rss)
	r.rssSum += rss
	r.rssN++
}

func (p *procTracker) sample() {
	for i, pr := range p.procs {
		if p.res[i].Error != "" {
			continue
		}
		if s, err := procstat.Read(pr.PID); err == nil {
			p.noteRSS(i, s.RSSBytes)
		}
	}
}

func (p *procTracker) stop(txns int64) []ProcessResult {
	for i, pr := range p.procs {
		r := &p.res[i]
		if r.Error != "" {
			continue
		}
		s, err := procstat.Read(pr.PID)
		if err != nil {
			r.Error = err.Error()
			continue
		}
		p.noteRSS(i, s.RSSBytes)
		r.CPUSeconds = procstat.TicksToDuration(s.CPUTicks - p.before[i].CPUTicks).Seconds()
		r.finish(txns)
	}
	return p.res
}
