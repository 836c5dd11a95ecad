package wire

import "sync"

// bufClasses are the capacities GetBuffer hands out. Few, widely spaced classes keep the pools warm; a
// buffer rounded up to its class wastes at most 4x, which is acceptable because buffers are leased only
// while bytes are in flight. The 4 MiB class is what a slow client's output costs: its buffer holds
// --max-client-output (1 MiB by default) plus the last read from its backend, and without the class
// that took a 16 MiB buffer per slow client.
var bufClasses = [...]int{4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20}

var bufPools [len(bufClasses)]sync.Pool

// MaxPooledBuffer is the largest buffer class; larger requests are allocated exactly and not pooled.
const MaxPooledBuffer = 16 << 20

func bufClass(size int) int {
	for i, c := range bufClasses {
		if size <= c {
			return i
		}
	}
	return -1
}

// bufCap is the capacity GetBuffer(size) returns.
func bufCap(size int) int {
	if i := bufClass(size); i >= 0 {
		return bufClasses[i]
	}
	return size
}

// GetBuffer leases a buffer of at least size bytes. Its len equals the capacity of its size class (4 KiB,
// 16 KiB, 64 KiB, 256 KiB, 1 MiB, 16 MiB); requests above 16 MiB get an exact, unpooled allocation.
// Return it with PutBuffer when the bytes have been consumed.
func GetBuffer(size int) *[]byte {
	i := bufClass(size)
	if i < 0 {
		b := make([]byte, size)
		return &b
	}
	if v := bufPools[i].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:bufClasses[i]]
		return b
	}
	b := make([]byte, bufClasses[i])
	return &b
}

// PutBuffer returns a buffer obtained from GetBuffer. The caller must not use it afterwards. Buffers whose
// capacity is not exactly a size class (including nil) are dropped for the garbage collector.
func PutBuffer(b *[]byte) {
	if b == nil {
		return
	}
	c := cap(*b)
	i := bufClass(c)
	if i < 0 || bufClasses[i] != c {
		return
	}
	*b = (*b)[:c]
	bufPools[i].Put(b)
}
