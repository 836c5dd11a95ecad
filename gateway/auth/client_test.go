package auth

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// authServer is a tiny PostgreSQL server that authenticates with an Exchange
// and then reports ready, just enough for pgconn.Connect to succeed.
type authServer struct {
	ln      net.Listener
	method  Method
	users   *Userlist
	results chan loginResult
	wg      sync.WaitGroup
}

// loginResult is what the server saw of one login.
type loginResult struct {
	user  string
	steps int   // client messages passed to Next
	err   error // from the Exchange, or the I/O around it
}

func startAuthServer(t *testing.T, m Method, users *Userlist) *authServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &authServer{ln: ln, method: m, users: users, results: make(chan loginResult, 16)}
	s.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Go(func() { s.results <- s.serve(conn) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
	})
	return s
}

func (s *authServer) serve(conn net.Conn) loginResult {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	be := pgproto3.NewBackend(conn, conn)
	msg, err := be.ReceiveStartupMessage()
	if err != nil {
		return loginResult{err: fmt.Errorf("receive startup: %w", err)}
	}
	sm, ok := msg.(*pgproto3.StartupMessage)
	if !ok {
		return loginResult{err: fmt.Errorf("unexpected startup message %T", msg)}
	}
	res := loginResult{user: sm.Parameters["user"]}

	ex := NewExchange(s.method, s.users, res.user)
	out, done, err := ex.Start()
	for err == nil {
		if _, werr := conn.Write(out); werr != nil {
			res.err = werr
			return res
		}
		if done {
			break
		}
		body, rerr := readAuthMessage(conn)
		if rerr != nil {
			res.err = rerr
			return res
		}
		res.steps++
		out, done, err = ex.Next(body)
	}
	if err != nil {
		res.err = err
		var ae *Error
		if errors.As(err, &ae) {
			be.Send(ae.ErrorResponse())
			be.Flush()
		}
		return res
	}

	be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := be.Flush(); err != nil {
		res.err = err
		return res
	}
	io.Copy(io.Discard, conn) // until the client's Terminate and close
	return res
}

// readAuthMessage reads one raw 'p' message and returns its body.
func readAuthMessage(r io.Reader) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("read auth message: %w", err)
	}
	if hdr[0] != 'p' {
		return nil, fmt.Errorf("read auth message: type %q, want 'p'", hdr[0])
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n < 4 || n-4 > MaxMessageLen {
		return nil, fmt.Errorf("read auth message: bad length %d", n)
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("read auth message: %w", err)
	}
	return body, nil
}

// login connects with the real pgx client and returns its error together with
// what the server saw.
func (s *authServer) login(t *testing.T, user, password string) (loginResult, error) {
	t.Helper()
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     s.ln.Addr().String(),
		Path:     "/db",
		RawQuery: "sslmode=disable",
	}
	if password == "" {
		u.User = url.User(user)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, u.String())
	if err == nil {
		conn.Close(ctx)
	}
	select {
	case res := <-s.results:
		return res, err
	case <-ctx.Done():
		t.Fatal("server did not finish the login")
		return loginResult{}, nil
	}
}

func TestRealClientLogin(t *testing.T) {
	ul := loadTestUserlist(t)
	pwSecret, err := SCRAMSecret("dave-pw")
	if err != nil {
		t.Fatal(err)
	}
	ul2, err := ParseUserlist(strings.NewReader(`"dave" "` + pwSecret + `"`))
	if err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name           string
		method         Method
		users          *Userlist
		user, password string
		steps          int
	}{
		{"scram plaintext", SCRAMSHA256, ul, "alice", "alice-pw", 2},
		{"scram secret", SCRAMSHA256, ul, "carol", "carol-pw", 2},
		{"scram SCRAMSecret", SCRAMSHA256, ul2, "dave", "dave-pw", 2},
		{"scram quoted user", SCRAMSHA256, ul, `odd "quoted" user`, `say "hi"`, 2},
		{"md5 plaintext", MD5, ul, "alice", "alice-pw", 1},
		{"md5 secret", MD5, ul, "bob", "bob-pw", 1},
		{"md5 quoted user", MD5, ul, `odd "quoted" user`, `say "hi"`, 1},
		{"trust", Trust, ul, "alice", "", 0},
		{"trust without userlist", Trust, nil, "anyone", "", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := startAuthServer(t, tt.method, tt.users)
			res, err := s.login(t, tt.user, tt.password)
			if err != nil {
				t.Fatalf("client: %v (server: %v)", err, res.err)
			}
			if res.err != nil || res.user != tt.user || res.steps != tt.steps {
				t.Fatalf("server saw %+v, want user %q in %d steps", res, tt.user, tt.steps)
			}
		})
	}
}

func TestRealClientLoginFails(t *testing.T) {
	ul := loadTestUserlist(t)
	for _, tt := range []struct {
		name           string
		method         Method
		user, password string
		steps          int
		detail         string // in the server's Error.Detail only
	}{
		{"scram wrong password", SCRAMSHA256, "alice", "nope", 2, "wrong password"},
		{"scram wrong password scram secret", SCRAMSHA256, "carol", "nope", 2, "wrong password"},
		{"scram unknown user", SCRAMSHA256, "ghost", "alice-pw", 2, "not found"},
		{"scram md5 secret", SCRAMSHA256, "bob", "bob-pw", 2, "md5 secret"},
		{"md5 wrong password", MD5, "alice", "nope", 1, "wrong password"},
		{"md5 wrong password md5 secret", MD5, "bob", "nope", 1, "wrong password"},
		{"md5 unknown user", MD5, "ghost", "alice-pw", 1, "not found"},
		{"md5 scram secret", MD5, "carol", "carol-pw", 1, "SCRAM-SHA-256 secret"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := startAuthServer(t, tt.method, ul)
			res, err := s.login(t, tt.user, tt.password)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("client error %v (%T), want a *pgconn.PgError", err, err)
			}
			// Everything the client sees must be the same as for a wrong
			// password of an existing user, except the user name.
			want := pgconn.PgError{
				Severity:            "FATAL",
				SeverityUnlocalized: "FATAL",
				Code:                "28P01",
				Message:             `password authentication failed for user "` + tt.user + `"`,
			}
			if *pgErr != want {
				t.Errorf("client got %#v, want %#v", *pgErr, want)
			}
			if res.steps != tt.steps {
				t.Errorf("server ran %d steps, want %d: the exchange must run to the end", res.steps, tt.steps)
			}
			var ae *Error
			if !errors.As(res.err, &ae) || !strings.Contains(ae.Detail, tt.detail) {
				t.Errorf("server error %v, want Detail containing %q", res.err, tt.detail)
			}
			if strings.Contains(pgErr.Error(), ae.Detail) {
				t.Errorf("client saw the detail %q", ae.Detail)
			}
		})
	}
}

// TestRealClientPostgresSecrets logs in with secrets that a real PostgreSQL
// produced, from the server on 127.0.0.1:5432 if there is one.
func TestRealClientPostgresSecrets(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pg, err := pgconn.Connect(ctx, "host=127.0.0.1 port=5432 user=postgres dbname=postgres sslmode=disable connect_timeout=3")
	if err != nil {
		t.Skipf("no PostgreSQL on 127.0.0.1:5432: %v", err)
	}
	t.Cleanup(func() { pg.Close(context.Background()) })

	role := "asyncgate_auth_" + randomHex(t, 6)
	password := randomHex(t, 12)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := pg.Exec(ctx, "DROP ROLE IF EXISTS "+role).ReadAll(); err != nil {
			t.Errorf("drop role %s: %v", role, err)
		}
	})
	secretFor := func(encryption string) string {
		t.Helper()
		sql := fmt.Sprintf("SET password_encryption = '%s'; ALTER ROLE %s PASSWORD '%s'; SELECT rolpassword FROM pg_authid WHERE rolname = '%s'",
			encryption, role, password, role)
		results, err := pg.Exec(ctx, sql).ReadAll()
		if err != nil {
			t.Fatalf("set %s password: %v", encryption, err)
		}
		rows := results[len(results)-1].Rows
		if len(rows) != 1 {
			t.Fatalf("got %d rows for role %s", len(rows), role)
		}
		return string(rows[0][0])
	}
	if _, err := pg.Exec(ctx, "CREATE ROLE "+role+" LOGIN").ReadAll(); err != nil {
		t.Fatalf("create role: %v", err)
	}

	scramSecret := secretFor("scram-sha-256")
	md5Secret := secretFor("md5")
	if !strings.HasPrefix(scramSecret, "SCRAM-SHA-256$") || !strings.HasPrefix(md5Secret, "md5") {
		t.Fatalf("unexpected secrets %q, %q", scramSecret, md5Secret)
	}

	for _, tt := range []struct {
		name   string
		method Method
		secret string
	}{
		{"scram", SCRAMSHA256, scramSecret},
		{"md5", MD5, md5Secret},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ul, err := ParseUserlist(strings.NewReader(fmt.Sprintf("%q %q\n", role, tt.secret)))
			if err != nil {
				t.Fatal(err)
			}
			s := startAuthServer(t, tt.method, ul)
			if res, err := s.login(t, role, password); err != nil || res.err != nil {
				t.Fatalf("login: client %v, server %v", err, res.err)
			}
			_, err = s.login(t, role, password+"x")
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
				t.Fatalf("wrong password: %v, want 28P01", err)
			}
		})
	}

	// Our own derivation must agree with PostgreSQL's.
	keys, err := parseSCRAMSecret(scramSecret)
	if err != nil {
		t.Fatal(err)
	}
	ours, err := deriveSCRAMKeys(password, keys.salt, keys.iterations)
	if err != nil {
		t.Fatal(err)
	}
	if string(ours.storedKey) != string(keys.storedKey) || string(ours.serverKey) != string(keys.serverKey) {
		t.Error("SCRAM keys derived here differ from PostgreSQL's")
	}
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
