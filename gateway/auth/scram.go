package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

const (
	scramMechanism         = "SCRAM-SHA-256"
	scramPrefix            = scramMechanism + "$"
	scramDefaultIterations = 4096 // PostgreSQL's scram_iterations default
	// pgx refuses more; a secret above it could never log in.
	scramMaxIterations = 10_000_000
	scramSaltLen       = 16 // what PostgreSQL generates
	scramMaxSaltLen    = 1024
	scramKeyLen        = sha256.Size
	scramServerNonce   = 18 // random bytes, as PostgreSQL
	scramMaxClientMsg  = 2048
	scramMaxNonceLen   = 1024
)

// b64 is the encoding of every base64 field in SCRAM and in secrets. Strict
// so that each value has exactly one accepted spelling.
var b64 = base64.StdEncoding.Strict()

type scramKeys struct {
	iterations int
	salt       []byte
	storedKey  []byte
	serverKey  []byte
}

// SCRAMSecret returns a SCRAM-SHA-256 secret for password in the format of
// pg_authid.rolpassword, with a random salt and 4096 iterations. Like
// PostgreSQL it hashes the password as given; unlike PostgreSQL it does not
// SASLprep-normalise it, which only matters for non-ASCII passwords.
func SCRAMSecret(password string) (string, error) {
	salt, err := randomBytes(scramSaltLen)
	if err != nil {
		return "", err
	}
	k, err := deriveSCRAMKeys(password, salt, scramDefaultIterations)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s%d:%s$%s:%s", scramPrefix, k.iterations,
		b64.EncodeToString(k.salt), b64.EncodeToString(k.storedKey), b64.EncodeToString(k.serverKey)), nil
}

func deriveSCRAMKeys(password string, salt []byte, iterations int) (*scramKeys, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, scramKeyLen)
	if err != nil {
		return nil, fmt.Errorf("auth: derive SCRAM keys: %w", err)
	}
	clientKey := hmacSHA256(salted, []byte("Client Key"))
	storedKey := sha256.Sum256(clientKey)
	return &scramKeys{
		iterations: iterations,
		salt:       salt,
		storedKey:  storedKey[:],
		serverKey:  hmacSHA256(salted, []byte("Server Key")),
	}, nil
}

// parseSCRAMSecret parses SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>.
func parseSCRAMSecret(s string) (*scramKeys, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("invalid SCRAM-SHA-256 secret: "+format, args...)
	}
	rest, _ := strings.CutPrefix(s, scramPrefix)
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return nil, bad(`want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`)
	}
	iterStr, saltStr, ok := strings.Cut(params, ":")
	if !ok {
		return nil, bad("missing ':' between iteration count and salt")
	}
	storedStr, serverStr, ok := strings.Cut(keys, ":")
	if !ok {
		return nil, bad("missing ':' between StoredKey and ServerKey")
	}
	iter, err := parseIterations(iterStr)
	if err != nil {
		return nil, bad("%v", err)
	}
	if len(saltStr) > b64.EncodedLen(scramMaxSaltLen) {
		return nil, bad("salt longer than %d bytes", scramMaxSaltLen)
	}
	salt, err := b64.DecodeString(saltStr)
	if err != nil || len(salt) == 0 || strings.ContainsAny(saltStr, "\r\n") {
		return nil, bad("salt is not base64")
	}
	stored, err := decodeKey(storedStr)
	if err != nil {
		return nil, bad("StoredKey: %v", err)
	}
	server, err := decodeKey(serverStr)
	if err != nil {
		return nil, bad("ServerKey: %v", err)
	}
	return &scramKeys{iterations: iter, salt: salt, storedKey: stored, serverKey: server}, nil
}

func parseIterations(s string) (int, error) {
	// Atoi alone would accept "+4096" and leading zeros.
	if s == "" || len(s) > 8 || s[0] == '0' || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("bad iteration count %q", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > scramMaxIterations {
		return 0, fmt.Errorf("iteration count %q out of range 1..%d", s, scramMaxIterations)
	}
	return n, nil
}

func decodeKey(s string) ([]byte, error) {
	if len(s) != b64.EncodedLen(scramKeyLen) {
		return nil, fmt.Errorf("want %d base64 bytes", scramKeyLen)
	}
	k, err := b64.DecodeString(s)
	if err != nil || len(k) != scramKeyLen {
		return nil, fmt.Errorf("want %d base64 bytes", scramKeyLen)
	}
	return k, nil
}

func hmacSHA256(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

func randomBytes(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("auth: random: %w", err)
	}
	return b, nil
}

// dummyKey seeds the fake secrets used for users that do not exist (or whose
// secret cannot serve the method). It is random per process, and the fake
// secrets are derived from it and the user name, so that repeated attempts
// for one unknown user see the same salt, as they would for a real user, and
// different unknown users see different salts.
var dummyKey = sync.OnceValue(func() []byte {
	b := make([]byte, 32)
	rand.Read(b) // never fails since Go 1.24
	return b
})

func dummyBytes(label, user string) []byte {
	return hmacSHA256(dummyKey(), []byte(label+"\x00"+user))
}

func dummySCRAMKeys(user string) *scramKeys {
	return &scramKeys{
		iterations: scramDefaultIterations,
		salt:       dummyBytes("salt", user)[:scramSaltLen],
		storedKey:  dummyBytes("stored", user),
		serverKey:  dummyBytes("server", user),
	}
}

// clientFirst is a parsed client-first-message (RFC 5802 section 7).
type clientFirst struct {
	gs2Header []byte // "n,," or "y,,"
	bare      []byte // client-first-message-bare
	nonce     []byte
}

// parseClientFirst parses a client-first-message. Its result aliases msg.
func parseClientFirst(msg []byte) (*clientFirst, *Error) {
	if len(msg) > scramMaxClientMsg {
		return nil, malformedSCRAM("client-first-message longer than %d bytes", scramMaxClientMsg)
	}
	if bytes.IndexByte(msg, 0) >= 0 {
		return nil, malformedSCRAM("NUL byte in client-first-message")
	}
	if len(msg) == 0 {
		return nil, malformedSCRAM("empty client-first-message")
	}
	switch msg[0] {
	case 'n', 'y':
		// 'y' says the client could bind but thinks we cannot, which is true.
	case 'p':
		return nil, protocolViolation("malformed SCRAM message: client requires channel binding, but SCRAM-SHA-256-PLUS was not offered")
	default:
		return nil, malformedSCRAM("unexpected channel-binding flag %q", msg[0])
	}
	if len(msg) < 2 || msg[1] != ',' {
		return nil, malformedSCRAM("expected ',' after channel-binding flag")
	}
	if len(msg) >= 4 && msg[2] == 'a' && msg[3] == '=' {
		return nil, &Error{Code: CodeFeatureNotSupported, Message: "client uses authorization identity, but it is not supported"}
	}
	if len(msg) < 3 || msg[2] != ',' {
		return nil, malformedSCRAM("expected ',' after gs2 header")
	}
	cf := &clientFirst{gs2Header: msg[:3], bare: msg[3:]}

	if bytes.HasPrefix(cf.bare, []byte("m=")) {
		return nil, &Error{Code: CodeFeatureNotSupported, Message: "client requires an unsupported SCRAM extension"}
	}
	attrs := bytes.Split(cf.bare, []byte(","))
	// The user name is ignored: the startup message names the user, and
	// libpq and pgx send it empty.
	if _, err := attrValue(attrs[0], 'n'); err != nil {
		return nil, err
	}
	if len(attrs) < 2 {
		return nil, malformedSCRAM(`expected attribute "r"`)
	}
	nonce, err := attrValue(attrs[1], 'r')
	if err != nil {
		return nil, err
	}
	if err := checkNonce(nonce); err != nil {
		return nil, err
	}
	cf.nonce = nonce
	if err := checkExtensions(attrs[2:]); err != nil {
		return nil, err
	}
	return cf, nil
}

// clientFinal is a parsed client-final-message.
type clientFinal struct {
	withoutProof []byte // client-final-message-without-proof
	binding      []byte // decoded c=
	nonce        []byte
	proof        []byte
}

// parseClientFinal parses a client-final-message. Its result aliases msg.
func parseClientFinal(msg []byte) (*clientFinal, *Error) {
	if len(msg) > scramMaxClientMsg {
		return nil, malformedSCRAM("client-final-message longer than %d bytes", scramMaxClientMsg)
	}
	if bytes.IndexByte(msg, 0) >= 0 {
		return nil, malformedSCRAM("NUL byte in client-final-message")
	}
	// No attribute value may contain ',' (base64, nonces and extension
	// values cannot), so splitting finds every attribute.
	attrs := bytes.Split(msg, []byte(","))
	if len(attrs) < 3 {
		return nil, malformedSCRAM("client-final-message needs attributes c, r and p")
	}
	cb, err := attrValue(attrs[0], 'c')
	if err != nil {
		return nil, err
	}
	cf := &clientFinal{}
	var decErr error
	if cf.binding, decErr = b64.DecodeString(string(cb)); decErr != nil {
		return nil, malformedSCRAM("channel binding is not base64")
	}
	if cf.nonce, err = attrValue(attrs[1], 'r'); err != nil {
		return nil, err
	}
	last := attrs[len(attrs)-1]
	if err := checkExtensions(attrs[2 : len(attrs)-1]); err != nil {
		return nil, err
	}
	p, err := attrValue(last, 'p')
	if err != nil {
		return nil, err
	}
	if len(p) != b64.EncodedLen(scramKeyLen) {
		return nil, malformedSCRAM("malformed proof")
	}
	if cf.proof, decErr = b64.DecodeString(string(p)); decErr != nil || len(cf.proof) != scramKeyLen {
		return nil, malformedSCRAM("malformed proof")
	}
	cf.withoutProof = msg[:len(msg)-len(last)-1]
	return cf, nil
}

// attrValue returns the value of attr, which must be "<name>=<value>".
func attrValue(attr []byte, name byte) ([]byte, *Error) {
	if len(attr) < 2 || attr[0] != name || attr[1] != '=' {
		return nil, malformedSCRAM("expected attribute %q", name)
	}
	return attr[2:], nil
}

// checkNonce enforces RFC 5802's printable: %x21-2B / %x2D-7E.
func checkNonce(nonce []byte) *Error {
	if len(nonce) == 0 || len(nonce) > scramMaxNonceLen {
		return malformedSCRAM("nonce must be 1 to %d characters", scramMaxNonceLen)
	}
	for _, c := range nonce {
		if c < 0x21 || c > 0x7e || c == ',' {
			return malformedSCRAM("nonce contains a non-printable character")
		}
	}
	return nil
}

// checkExtensions accepts and ignores optional extensions, as PostgreSQL does.
func checkExtensions(attrs [][]byte) *Error {
	for _, a := range attrs {
		if len(a) < 2 || a[1] != '=' || !('a' <= a[0] && a[0] <= 'z' || 'A' <= a[0] && a[0] <= 'Z') {
			return malformedSCRAM("malformed attribute %q", a)
		}
	}
	return nil
}

func malformedSCRAM(format string, args ...any) *Error {
	return protocolViolation("malformed SCRAM message: "+format, args...)
}
