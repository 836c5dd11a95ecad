package auth

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

var fuzzCodes = map[string]bool{
	CodeInvalidPassword: true, CodeProtocolViolation: true, CodeFeatureNotSupported: true,
}

// FuzzExchangeNext feeds arbitrary client messages to an exchange. It must
// never panic, fail only with *Error, and never let anyone in: every salt and
// nonce is random, so no fixed input can hold a valid answer.
func FuzzExchangeNext(f *testing.F) {
	ul := loadTestUserlist(f)
	users := []string{"alice", "bob", "carol", "ghost"}
	proof := ",p=" + strings.Repeat("A", 43) + "="

	f.Add(uint8(MD5), uint8(0), body(f, &pgproto3.PasswordMessage{Password: "md5" + strings.Repeat("0", 32)}), []byte(nil))
	f.Add(uint8(MD5), uint8(1), []byte("\x00"), []byte(nil))
	for u := range users {
		f.Add(uint8(SCRAMSHA256), uint8(u), saslInitial(f, "n,,n=,r=abcdef"), []byte("c=biws,r=abcdef"+proof))
	}
	f.Add(uint8(SCRAMSHA256), uint8(0), saslInitial(f, "y,,n=x,r=a,e=ext"), []byte("c=eSws,r=a,e=x"+proof))
	f.Add(uint8(SCRAMSHA256), uint8(0), saslInitial(f, "p=tls-server-end-point,,n=,r=a"), []byte(nil))
	f.Add(uint8(SCRAMSHA256), uint8(2), []byte("SCRAM-SHA-256\x00\xff\xff\xff\xff"), []byte("c=,r=,p="))
	f.Add(uint8(SCRAMSHA256), uint8(3), []byte("SCRAM-SHA-256\x00\x00\x00\x00\x05n,,n="), []byte(",,,"))

	f.Fuzz(func(t *testing.T, method, user uint8, first, second []byte) {
		m := Method(method % 3)
		ex := NewExchange(m, ul, users[int(user)%len(users)])
		out, done, err := ex.Start()
		if err != nil {
			t.Fatal(err)
		}
		for _, msg := range [][]byte{first, second} {
			if done {
				break
			}
			firstCopy := bytes.Clone(msg)
			out, done, err = ex.Next(msg)
			if !bytes.Equal(msg, firstCopy) {
				t.Fatal("Next modified its input")
			}
			if err != nil {
				var ae *Error
				if !errors.As(err, &ae) || !fuzzCodes[ae.Code] || !done || out != nil {
					t.Fatalf("Next: %v (%T), done=%v", err, err, done)
				}
				return
			}
		}
		if done && m != Trust {
			t.Fatalf("%v login succeeded with fuzz input; out % x", m, out)
		}
	})
}

// FuzzSCRAMClientFirst checks the client-first-message parser, both alone
// and inside an exchange.
func FuzzSCRAMClientFirst(f *testing.F) {
	ul := loadTestUserlist(f)
	for _, s := range []string{
		"n,,n=,r=rOprNGfwEbeRWgbNEkqO",
		"y,,n=user,r=abc,x=ext",
		"n,a=authz,n=,r=abc",
		"n,,m=ext,n=,r=abc",
		"p=tls-server-end-point,,n=,r=abc",
		"n,,n=,r=a,b",
		"n,,n=,r=\x7f",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		cf, perr := parseClientFirst(msg)
		if perr != nil {
			if !fuzzCodes[perr.Code] {
				t.Fatalf("error %v", perr)
			}
		} else {
			if h := string(cf.gs2Header); h != "n,," && h != "y,," {
				t.Fatalf("accepted gs2 header %q", h)
			}
			if checkNonce(cf.nonce) != nil || !bytes.HasSuffix(msg, cf.bare) {
				t.Fatalf("accepted %q with nonce %q", msg, cf.nonce)
			}
		}

		ex := NewExchange(SCRAMSHA256, ul, "alice")
		ex.Start()
		out, done, err := ex.Next(saslInitial(t, string(msg)))
		if (err == nil) != (perr == nil) {
			t.Fatalf("parser says %v, exchange says %v", perr, err)
		}
		if err != nil {
			return
		}
		cont, ok := decodeAuth(t, out)[0].(*pgproto3.AuthenticationSASLContinue)
		if done || !ok || !bytes.HasPrefix(cont.Data, append([]byte("r="), cf.nonce...)) {
			t.Fatalf("server-first %q does not carry client nonce %q", out, cf.nonce)
		}
	})
}

// FuzzParseUserlist checks the userlist parser never panics and that what
// it accepts can be looked up.
func FuzzParseUserlist(f *testing.F) {
	f.Add([]byte("\"alice\" \"pw\"\n; c\n# c\n\"b\"\"q\" \"md50123456789abcdef0123456789abcdef\"\n"))
	f.Add([]byte(`"carol" "SCRAM-SHA-256$4096:c2FsdA==$NKUa75uqE9dIUvcfhJW9AFViafZK+XrGEuUpvyewQPs=:/nGlkcNRhMbO8HkOmh3nZlkxLYUZl125ep/cPZAk6es="`))
	f.Add([]byte("\"a\" \"b\" c\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		ul, err := ParseUserlist(bytes.NewReader(in))
		if err != nil {
			if !strings.Contains(err.Error(), "line ") {
				t.Fatalf("error without a line number: %v", err)
			}
			return
		}
		for _, u := range ul.Users() {
			s, ok := ul.Lookup(u)
			if !ok || s.Kind() < KindPlain || s.Kind() > KindSCRAM {
				t.Fatalf("user %q: %v, %v", u, s, ok)
			}
		}
	})
}
