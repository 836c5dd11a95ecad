// Package admission will bound every queue in front of the backends: wait queues with length and
// time limits, priorities with anti-starvation, rate and concurrency limits, and fast rejections
// with a proper SQLSTATE. Until it lands, each pool's own bounded FIFO (pool.Config.MaxQueue and
// WaitTimeout) is the only admission control.
package admission
