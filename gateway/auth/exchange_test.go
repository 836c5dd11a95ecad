package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// decodeAuth decodes the messages an Exchange returned.
func decodeAuth(t testing.TB, out []byte) []pgproto3.BackendMessage {
	t.Helper()
	var msgs []pgproto3.BackendMessage
	for len(out) > 0 {
		if len(out) < 9 || out[0] != 'R' {
			t.Fatalf("bad authentication message % x", out)
		}
		n := int(binary.BigEndian.Uint32(out[1:]))
		if n < 8 || 1+n > len(out) {
			t.Fatalf("bad message length %d", n)
		}
		body := out[5 : 1+n]
		out = out[1+n:]
		var msg interface {
			pgproto3.BackendMessage
			Decode([]byte) error
		}
		switch binary.BigEndian.Uint32(body) {
		case pgproto3.AuthTypeOk:
			msg = &pgproto3.AuthenticationOk{}
		case pgproto3.AuthTypeMD5Password:
			msg = &pgproto3.AuthenticationMD5Password{}
		case pgproto3.AuthTypeSASL:
			msg = &pgproto3.AuthenticationSASL{}
		case pgproto3.AuthTypeSASLContinue:
			msg = &pgproto3.AuthenticationSASLContinue{}
		case pgproto3.AuthTypeSASLFinal:
			msg = &pgproto3.AuthenticationSASLFinal{}
		default:
			t.Fatalf("unexpected auth type in % x", body)
		}
		if err := msg.Decode(body); err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, msg)
	}
	return msgs
}

// body returns msg encoded without type byte and length, as Next takes it.
func body(t testing.TB, msg pgproto3.FrontendMessage) []byte {
	b, err := msg.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b[5:]
}

func saslInitial(t testing.TB, data string) []byte {
	return body(t, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(data)})
}

type serverFirst struct {
	raw        string
	nonce      string
	salt       []byte
	iterations int
}

// scramToFinal drives a SCRAM exchange up to the server-first-message.
func scramToFinal(t testing.TB, ex *Exchange, clientFirst string) serverFirst {
	t.Helper()
	out, done, err := ex.Start()
	if err != nil || done {
		t.Fatalf("Start: %v, done=%v", err, done)
	}
	if m, ok := decodeAuth(t, out)[0].(*pgproto3.AuthenticationSASL); !ok || len(m.AuthMechanisms) != 1 || m.AuthMechanisms[0] != "SCRAM-SHA-256" {
		t.Fatalf("Start sent %v, want SASL with just SCRAM-SHA-256", decodeAuth(t, out))
	}
	out, done, err = ex.Next(saslInitial(t, clientFirst))
	if err != nil || done {
		t.Fatalf("Next(client-first): %v, done=%v", err, done)
	}
	cont, ok := decodeAuth(t, out)[0].(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		t.Fatalf("want AuthenticationSASLContinue, got %v", decodeAuth(t, out))
	}
	sf := serverFirst{raw: string(cont.Data)}
	for _, attr := range strings.Split(sf.raw, ",") {
		k, v, _ := strings.Cut(attr, "=")
		switch k {
		case "r":
			sf.nonce = v
		case "s":
			sf.salt, err = base64.StdEncoding.DecodeString(v)
		case "i":
			sf.iterations, err = strconv.Atoi(v)
		}
		if err != nil {
			t.Fatalf("server-first %q: %v", sf.raw, err)
		}
	}
	return sf
}

// testClientFinal computes a client-final-message like a SCRAM client.
func testClientFinal(password, gs2, clientFirstBare string, sf serverFirst) (msg string, serverSig []byte) {
	salted, _ := pbkdf2.Key(sha256.New, password, sf.salt, sf.iterations, 32)
	mac := func(key []byte, s string) []byte {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(s))
		return m.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	withoutProof := "c=" + base64.StdEncoding.EncodeToString([]byte(gs2)) + ",r=" + sf.nonce
	authMessage := clientFirstBare + "," + sf.raw + "," + withoutProof
	proof := mac(storedKey[:], authMessage)
	for i := range proof {
		proof[i] ^= clientKey[i]
	}
	return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof), mac(mac(salted, "Server Key"), authMessage)
}

func TestExchangeSCRAM(t *testing.T) {
	ul := loadTestUserlist(t)
	// "y,," is what a TLS client sends when no -PLUS is offered; the user
	// name in the SCRAM message is ignored.
	for _, gs2 := range []string{"n,,", "y,,"} {
		ex := NewExchange(SCRAMSHA256, ul, "carol")
		bare := "n=someone-else,r=clientnonce"
		sf := scramToFinal(t, ex, gs2+bare)
		if !strings.HasPrefix(sf.nonce, "clientnonce") || len(sf.nonce) < len("clientnonce")+18 {
			t.Fatalf("server nonce %q does not extend the client's", sf.nonce)
		}
		final, serverSig := testClientFinal("carol-pw", gs2, bare, sf)
		out, done, err := ex.Next(body(t, &pgproto3.SASLResponse{Data: []byte(final)}))
		if err != nil || !done {
			t.Fatalf("%s: Next(client-final): %v, done=%v", gs2, err, done)
		}
		msgs := decodeAuth(t, out)
		if len(msgs) != 2 {
			t.Fatalf("got %d messages, want SASLFinal and Ok", len(msgs))
		}
		fin, ok := msgs[0].(*pgproto3.AuthenticationSASLFinal)
		if !ok || string(fin.Data) != "v="+base64.StdEncoding.EncodeToString(serverSig) {
			t.Errorf("server-final %v, want the server signature", msgs[0])
		}
		if _, ok := msgs[1].(*pgproto3.AuthenticationOk); !ok {
			t.Errorf("last message %T, want AuthenticationOk", msgs[1])
		}
		if _, _, err := ex.Next(nil); err == nil {
			t.Error("Next after success did not fail")
		}
	}
}

// An unknown user gets a salt that stays the same across attempts, like a
// real user's, but differs between users.
func TestExchangeUnknownUserSalt(t *testing.T) {
	ul := loadTestUserlist(t)
	salt := func(user string) serverFirst {
		return scramToFinal(t, NewExchange(SCRAMSHA256, ul, user), "n,,n=,r=abc")
	}
	g1, g2, other := salt("ghost"), salt("ghost"), salt("phantom")
	if !bytes.Equal(g1.salt, g2.salt) {
		t.Error("an unknown user's salt changes between attempts")
	}
	if bytes.Equal(g1.salt, other.salt) {
		t.Error("two unknown users share a salt")
	}
	real := salt("alice")
	if len(g1.salt) != len(real.salt) || g1.iterations != real.iterations {
		t.Errorf("fake salt %d bytes, %d iterations; real %d bytes, %d iterations",
			len(g1.salt), g1.iterations, len(real.salt), real.iterations)
	}
	if g1.nonce == g2.nonce {
		t.Error("server nonce repeats")
	}

	// The right password for some other user gets the usual failure.
	ex := NewExchange(SCRAMSHA256, ul, "ghost")
	sf := scramToFinal(t, ex, "n,,n=,r=abc")
	final, _ := testClientFinal("alice-pw", "n,,", "n=,r=abc", sf)
	_, done, err := ex.Next(body(t, &pgproto3.SASLResponse{Data: []byte(final)}))
	var ae *Error
	if !done || !errors.As(err, &ae) || ae.Code != "28P01" || ae.Message != `password authentication failed for user "ghost"` {
		t.Fatalf("unknown user: done=%v err=%v", done, err)
	}
}

func TestExchangeMD5(t *testing.T) {
	ul := loadTestUserlist(t)
	login := func(user, password string) error {
		ex := NewExchange(MD5, ul, user)
		out, _, err := ex.Start()
		if err != nil {
			t.Fatal(err)
		}
		salt := decodeAuth(t, out)[0].(*pgproto3.AuthenticationMD5Password).Salt
		inner := md5.Sum([]byte(password + user))
		outer := md5.Sum(append([]byte(hex.EncodeToString(inner[:])), salt[:]...))
		out, done, err := ex.Next(body(t, &pgproto3.PasswordMessage{Password: "md5" + hex.EncodeToString(outer[:])}))
		if err == nil {
			if _, ok := decodeAuth(t, out)[0].(*pgproto3.AuthenticationOk); !ok || !done {
				t.Fatalf("success without AuthenticationOk: %v", decodeAuth(t, out))
			}
		}
		return err
	}
	if err := login("alice", "alice-pw"); err != nil {
		t.Error(err)
	}
	if err := login("bob", "bob-pw"); err != nil {
		t.Error(err)
	}
	if err := login("bob", "alice-pw"); err == nil {
		t.Error("wrong password accepted")
	}

	// The salt is random per login.
	salts := map[[4]byte]bool{}
	for range 8 {
		out, _, _ := NewExchange(MD5, ul, "alice").Start()
		salts[decodeAuth(t, out)[0].(*pgproto3.AuthenticationMD5Password).Salt] = true
	}
	if len(salts) < 7 {
		t.Errorf("8 logins got only %d distinct salts", len(salts))
	}

	// A cleartext password where the md5 answer belongs is just wrong.
	ex := NewExchange(MD5, ul, "alice")
	ex.Start()
	_, _, err := ex.Next(body(t, &pgproto3.PasswordMessage{Password: "alice-pw"}))
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != "28P01" {
		t.Errorf("cleartext answer: %v, want 28P01", err)
	}
}

func TestExchangeProtocolViolations(t *testing.T) {
	ul := loadTestUserlist(t)
	long := strings.Repeat("x", MaxMessageLen+1)
	initialWithLen := func(mech string, n int32, data string) []byte {
		b := append([]byte(mech), 0)
		b = binary.BigEndian.AppendUint32(b, uint32(n))
		return append(b, data...)
	}
	for _, tt := range []struct {
		name   string
		method Method
		first  []byte // nil: client-first is fine, final is tested
		final  string
		code   string
	}{
		{"md5 empty", MD5, []byte{}, "", "08P01"},
		{"md5 no NUL", MD5, []byte("md5abc"), "", "08P01"},
		{"md5 NUL inside", MD5, []byte("md5\x00abc\x00"), "", "08P01"},
		{"md5 too long", MD5, []byte(long + "\x00"), "", "08P01"},
		{"sasl garbage", SCRAMSHA256, []byte("garbage"), "", "08P01"},
		{"sasl wrong mechanism", SCRAMSHA256, body(t, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte("p=tls-server-end-point,,n=,r=abc")}), "", "08P01"},
		{"sasl length too short", SCRAMSHA256, initialWithLen("SCRAM-SHA-256", 3, "n,,n=,r=abc"), "", "08P01"},
		{"sasl no initial response", SCRAMSHA256, initialWithLen("SCRAM-SHA-256", -1, ""), "", "08P01"},
		{"empty client-first", SCRAMSHA256, saslInitial(t, ""), "", "08P01"},
		{"channel binding", SCRAMSHA256, saslInitial(t, "p=tls-server-end-point,,n=,r=abc"), "", "08P01"},
		{"bad cbind flag", SCRAMSHA256, saslInitial(t, "x,,n=,r=abc"), "", "08P01"},
		{"authzid", SCRAMSHA256, saslInitial(t, "n,a=bob,n=,r=abc"), "", "0A000"},
		{"mandatory extension", SCRAMSHA256, saslInitial(t, "n,,m=x,n=,r=abc"), "", "0A000"},
		{"no user attr", SCRAMSHA256, saslInitial(t, "n,,r=abc"), "", "08P01"},
		{"no nonce", SCRAMSHA256, saslInitial(t, "n,,n="), "", "08P01"},
		{"empty nonce", SCRAMSHA256, saslInitial(t, "n,,n=,r="), "", "08P01"},
		{"nonce with space", SCRAMSHA256, saslInitial(t, "n,,n=,r=a c"), "", "08P01"},
		{"nonce with NUL", SCRAMSHA256, saslInitial(t, "n,,n=,r=a\x00c"), "", "08P01"},
		{"nonce too long", SCRAMSHA256, saslInitial(t, "n,,n=,r="+strings.Repeat("a", 1025)), "", "08P01"},
		{"bad extension", SCRAMSHA256, saslInitial(t, "n,,n=,r=abc,=x"), "", "08P01"},
		{"final garbage", SCRAMSHA256, nil, "garbage", "08P01"},
		{"final binding mismatch", SCRAMSHA256, nil, "c=eSws,r=NONCE,p=" + strings.Repeat("A", 43) + "=", "08P01"},
		{"final binding not base64", SCRAMSHA256, nil, "c=biw,r=NONCE,p=" + strings.Repeat("A", 43) + "=", "08P01"},
		{"final nonce mismatch", SCRAMSHA256, nil, "c=biws,r=abc,p=" + strings.Repeat("A", 43) + "=", "08P01"},
		{"final short proof", SCRAMSHA256, nil, "c=biws,r=NONCE,p=AAAA", "08P01"},
		{"final proof not base64", SCRAMSHA256, nil, "c=biws,r=NONCE,p=" + strings.Repeat("*", 43) + "=", "08P01"},
		{"final garbage after proof", SCRAMSHA256, nil, "c=biws,r=NONCE,p=" + strings.Repeat("A", 43) + "=,x=1", "08P01"},
		{"final no proof", SCRAMSHA256, nil, "c=biws,r=NONCE", "08P01"},
		{"final bad extension", SCRAMSHA256, nil, "c=biws,r=NONCE,1=x,p=" + strings.Repeat("A", 43) + "=", "08P01"},
		{"final wrong proof", SCRAMSHA256, nil, "c=biws,r=NONCE,x=ext,p=" + strings.Repeat("A", 43) + "=", "28P01"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ex := NewExchange(tt.method, ul, "alice")
			var err error
			var done bool
			if tt.first != nil {
				if _, _, err := ex.Start(); err != nil {
					t.Fatal(err)
				}
				_, done, err = ex.Next(tt.first)
			} else {
				sf := scramToFinal(t, ex, "n,,n=,r=abc")
				final := strings.Replace(tt.final, "NONCE", sf.nonce, 1)
				_, done, err = ex.Next(body(t, &pgproto3.SASLResponse{Data: []byte(final)}))
			}
			var ae *Error
			if !errors.As(err, &ae) || ae.Code != tt.code || !done {
				t.Fatalf("err = %v, done = %v; want SQLSTATE %s", err, done, tt.code)
			}
			if _, _, err := ex.Next([]byte("n,,n=,r=abc")); err == nil {
				t.Error("Next after a failure did not fail")
			}
		})
	}
}

func TestExchangeMisuse(t *testing.T) {
	ex := NewExchange(Trust, nil, "x")
	out, done, err := ex.Start()
	if err != nil || !done {
		t.Fatalf("trust Start: %v, %v", err, done)
	}
	if _, ok := decodeAuth(t, out)[0].(*pgproto3.AuthenticationOk); !ok {
		t.Fatal("trust did not send AuthenticationOk")
	}
	if _, _, err := ex.Start(); err == nil {
		t.Error("second Start did not fail")
	}
	if _, _, err := ex.Next([]byte("x\x00")); err == nil {
		t.Error("Next after trust did not fail")
	}
	if _, _, err := NewExchange(SCRAMSHA256, nil, "x").Next(nil); err == nil {
		t.Error("Next before Start did not fail")
	}
}

func TestErrorResponseHidesDetail(t *testing.T) {
	e := authFailed("u", "secret reason")
	r := e.ErrorResponse()
	if r.Severity != "FATAL" || r.Code != "28P01" || r.Message != e.Message || r.Detail != "" {
		t.Errorf("ErrorResponse() = %+v", r)
	}
	if !strings.Contains(e.Error(), "secret reason") || !strings.Contains(e.Error(), "28P01") {
		t.Errorf("Error() = %q, want code and detail for the log", e.Error())
	}
}
