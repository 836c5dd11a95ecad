package benchmarks

import (
	"fmt"
	"math"
	"os"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// WritePlot draws a PNG with two panels: latency percentiles per target (log scale), and
// throughput over the run's wall time, where interleaved rounds show as separate segments.
func (r *Report) WritePlot(path string) error {
	if len(r.Targets) == 0 {
		return fmt.Errorf("benchmarks: plot: no load results")
	}
	lat, err := r.latencyPlot()
	if err != nil {
		return fmt.Errorf("benchmarks: plot: %w", err)
	}
	tput, err := r.throughputPlot()
	if err != nil {
		return fmt.Errorf("benchmarks: plot: %w", err)
	}

	img := vgimg.New(28*vg.Centimeter, 11*vg.Centimeter)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Centimeter, PadTop: vg.Millimeter * 3,
		PadBottom: vg.Millimeter * 3, PadLeft: vg.Millimeter * 3, PadRight: vg.Millimeter * 3}
	canvases := plot.Align([][]*plot.Plot{{lat, tput}}, tiles, dc)
	lat.Draw(canvases[0][0])
	tput.Draw(canvases[0][1])

	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("benchmarks: plot: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("benchmarks: plot: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("benchmarks: plot: %w", err)
	}
	return nil
}

func (r *Report) latencyPlot() (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Latency percentiles"
	p.Y.Label.Text = "ms"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = logTicks{}
	p.Legend.Top = true
	p.Legend.Left = true
	var labels []string
	lo, hi := math.Inf(1), 0.0
	for i, t := range r.Targets {
		var vals []float64
		labels, vals = t.Latency.Percentiles()
		pts := make(plotter.XYs, len(vals))
		for j, v := range vals {
			// A log axis cannot show zero (a target with no successful transaction).
			v = max(v, 0.001)
			pts[j] = plotter.XY{X: float64(j), Y: v}
			lo, hi = min(lo, v), max(hi, v)
		}
		line, points, err := plotter.NewLinePoints(pts)
		if err != nil {
			return nil, err
		}
		line.Color = plotutil.Color(i)
		points.Color = plotutil.Color(i)
		points.Shape = plotutil.Shape(i)
		p.Add(line, points)
		p.Legend.Add(fmt.Sprintf("%s (%.0f tps)", t.Name, t.TPS), line, points)
	}
	p.NominalX(labels...)
	p.X.Min, p.X.Max = -0.3, float64(len(labels))-0.7
	// Headroom above the highest line for the legend.
	p.Y.Min, p.Y.Max = lo/1.2, hi*math.Pow(hi/lo, 0.25)*1.5
	return p, nil
}

// logTicks labels 1-2-5 steps of each decade; plot.LogTicks labels only powers of ten, which
// leaves a narrow range (say 0.3 to 0.9 ms) without a single label.
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for e := math.Floor(math.Log10(lo)); math.Pow(10, e) <= hi; e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v >= lo && v <= hi {
				ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
			}
		}
	}
	if len(ticks) < 2 {
		return plot.DefaultTicks{}.Ticks(lo, hi)
	}
	return ticks
}

func (r *Report) throughputPlot() (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Throughput"
	p.X.Label.Text = "time since start (s)"
	p.Y.Label.Text = "transactions/s"
	p.Legend.Top = true
	peak := 0.0
	for i, t := range r.Targets {
		var first *plotter.Line
		// One line per round, so the gaps while other targets ran stay gaps.
		for start := 0; start < len(t.Throughput); {
			end := start
			for end < len(t.Throughput) && t.Throughput[end].Round == t.Throughput[start].Round {
				end++
			}
			pts := make(plotter.XYs, end-start)
			for j, s := range t.Throughput[start:end] {
				pts[j] = plotter.XY{X: s.TimeS, Y: s.TPS}
				peak = max(peak, s.TPS)
			}
			line, err := plotter.NewLine(pts)
			if err != nil {
				return nil, err
			}
			line.Color = plotutil.Color(i)
			line.Width = vg.Points(1.5)
			p.Add(line)
			if first == nil {
				first = line
			}
			start = end
		}
		if first != nil {
			p.Legend.Add(t.Name, first)
		}
	}
	p.Y.Min, p.Y.Max = 0, peak*1.2+1 // headroom for the legend
	return p, nil
}
