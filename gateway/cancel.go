package gateway

import (
	"crypto/rand"
	"encoding/binary"
)

// cancelKey is the BackendKeyData the gateway gives a client: its own, never a server's, so a
// client can only ever cancel its own work.
type cancelKey struct {
	pid    uint32
	secret uint32
}

func makeCancelKey(pid uint32, key []byte) (cancelKey, bool) {
	if len(key) != 4 {
		return cancelKey{}, false
	}
	return cancelKey{pid: pid, secret: binary.BigEndian.Uint32(key)}, true
}

func (k cancelKey) secretBytes() []byte {
	return binary.BigEndian.AppendUint32(nil, k.secret)
}

// register gives s a fresh random key.
func (srv *Server) register(s *session) cancelKey {
	var b [8]byte
	srv.cancelMu.Lock()
	defer srv.cancelMu.Unlock()
	for {
		rand.Read(b[:])
		k := cancelKey{pid: binary.BigEndian.Uint32(b[:4]) &^ (1 << 31), secret: binary.BigEndian.Uint32(b[4:])}
		if _, taken := srv.cancels[k]; !taken && k.pid != 0 {
			srv.cancels[k] = s
			return k
		}
	}
}

func (srv *Server) unregister(k cancelKey) {
	srv.cancelMu.Lock()
	delete(srv.cancels, k)
	srv.cancelMu.Unlock()
}
