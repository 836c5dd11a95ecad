package auth

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

func loadTestUserlist(t testing.TB) *Userlist {
	t.Helper()
	ul, err := LoadUserlist(filepath.Join("testdata", "userlist.txt"))
	if err != nil {
		t.Fatal(err)
	}
	return ul
}

func TestLoadUserlist(t *testing.T) {
	ul := loadTestUserlist(t)

	wantUsers := []string{"alice", "bob", "carol", `odd "quoted" user`}
	if got := ul.Users(); !slices.Equal(got, wantUsers) {
		t.Fatalf("Users() = %q, want %q", got, wantUsers)
	}
	for user, kind := range map[string]SecretKind{
		"alice": KindPlain, "bob": KindMD5, "carol": KindSCRAM, `odd "quoted" user`: KindPlain,
	} {
		s, ok := ul.Lookup(user)
		if !ok || s.Kind() != kind {
			t.Errorf("Lookup(%q) = %v, %v; want a %v secret", user, s, ok, kind)
		}
	}
	if _, ok := ul.Lookup("nobody"); ok {
		t.Error(`Lookup("nobody") found a secret`)
	}

	if pw, ok := ul.Password(`odd "quoted" user`); !ok || pw != `say "hi"` {
		t.Errorf("Password(odd user) = %q, %v; want the unescaped password", pw, ok)
	}
	if pw, ok := ul.Password("alice"); !ok || pw != "alice-pw" {
		t.Errorf("Password(alice) = %q, %v", pw, ok)
	}
	for _, user := range []string{"bob", "carol", "nobody"} {
		if pw, ok := ul.Password(user); ok {
			t.Errorf("Password(%q) = %q; want none, it has no plaintext secret", user, pw)
		}
	}

	carol, _ := ul.Lookup("carol")
	keys, err := carol.scram()
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := deriveSCRAMKeys("carol-pw", keys.salt, keys.iterations); string(want.storedKey) != string(keys.storedKey) || string(want.serverKey) != string(keys.serverKey) {
		t.Error("carol's parsed SCRAM keys do not match her password")
	}

	// A secret must not end up in logs by accident.
	if s := carol.String(); strings.Contains(s, "4096") {
		t.Errorf("Secret.String() = %q leaks the secret", s)
	}
}

func TestLoadUserlistMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.txt")
	_, err := LoadUserlist(path)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want ErrNotExist", err)
	}
}

func TestLoadUserlistErrorNamesPathAndLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(path, []byte("\"a\" \"b\"\n\"broken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadUserlist(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "line 2:") {
		t.Fatalf("err = %v, want one naming %s and line 2", err, path)
	}
}

func TestParseUserlist(t *testing.T) {
	in := "\r\n" +
		"   ; comment\r\n" +
		"# another \"comment\"\n" +
		"\t\"u1\"   \"md5ABCDEF0123456789abcdef0123456789\"  \n" + // upper-case hex is md5 too
		"\"u2\" \"md5-not-hex-but-35-characters-long!\"\n" + // so this one is plaintext
		`"u3" """"` + "\n" +
		`"" "" x` // never reached: u3's line is fine, this one is not
	_, err := ParseUserlist(strings.NewReader(in))
	if err == nil || !strings.Contains(err.Error(), "line 7:") {
		t.Fatalf("err = %v, want an error on line 7", err)
	}

	ul, err := ParseUserlist(strings.NewReader(strings.TrimSuffix(in, `"" "" x`)))
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := ul.Lookup("u1"); s.Kind() != KindMD5 || s.value != "md5abcdef0123456789abcdef0123456789" {
		t.Errorf("u1: %v %q; want an md5 secret in lower case", s, s.value)
	}
	if pw, ok := ul.Password("u2"); !ok || pw != "md5-not-hex-but-35-characters-long!" {
		t.Errorf("u2: %q, %v; want plaintext", pw, ok)
	}
	if pw, ok := ul.Password("u3"); !ok || pw != `"` {
		t.Errorf("u3: %q, %v; want a lone quote", pw, ok)
	}
	if len(ul.Users()) != 3 {
		t.Errorf("Users() = %q", ul.Users())
	}
}

func TestParseUserlistErrors(t *testing.T) {
	const scram = "SCRAM-SHA-256$4096:+8rJNS80brDHyDG5wDe/Sw==$NKUa75uqE9dIUvcfhJW9AFViafZK+XrGEuUpvyewQPs=:/nGlkcNRhMbO8HkOmh3nZlkxLYUZl125ep/cPZAk6es="
	for _, tt := range []struct {
		name, line, want string
	}{
		{"unquoted user", `alice "pw"`, "quoted string"},
		{"unterminated user", `"alice`, "unterminated"},
		{"unterminated secret", `"alice" "pw`, "unterminated"},
		{"missing secret", `"alice"`, "missing secret"},
		{"no space", `"alice"x"pw"`, "whitespace"},
		{"escaped quote eats the separator", `"alice""pw"`, "missing secret"},
		{"trailing text", `"alice" "pw" extra`, "after secret"},
		{"empty user", `"" "pw"`, "empty user"},
		{"empty secret", `"alice" ""`, "empty secret"},
		{"duplicate", `"u" "pw"`, "duplicate user"},
		{"scram no keys", `"alice" "SCRAM-SHA-256$4096:c2FsdA=="`, "SCRAM"},
		{"scram bad iter", `"alice" "` + strings.Replace(scram, "$4096:", "$0:", 1) + `"`, "iteration"},
		{"scram huge iter", `"alice" "` + strings.Replace(scram, "$4096:", "$99999999:", 1) + `"`, "iteration"},
		{"scram signed iter", `"alice" "` + strings.Replace(scram, "$4096:", "$+4096:", 1) + `"`, "iteration"},
		{"scram bad salt", `"alice" "` + strings.Replace(scram, "+8rJ", "*8rJ", 1) + `"`, "salt"},
		{"scram empty salt", `"alice" "` + strings.Replace(scram, "+8rJNS80brDHyDG5wDe/Sw==", "", 1) + `"`, "salt"},
		{"scram short key", `"alice" "` + strings.Replace(scram, "NKUa75uq", "", 1) + `"`, "StoredKey"},
		{"scram bad server key", `"alice" "` + strings.Replace(scram, ":/nG", ":!nG", 1) + `"`, "ServerKey"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// The bad line is line 4, after a comment, a blank and a good line.
			in := "; users\n\n\"u\" \"pw\"\n" + tt.line + "\n\"z\" \"pw\"\n"
			_, err := ParseUserlist(strings.NewReader(in))
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), "line 4:") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %q, want line 4 and %q", err, tt.want)
			}
		})
	}
}

func TestParseMethod(t *testing.T) {
	for s, want := range map[string]Method{"trust": Trust, "md5": MD5, "scram-sha-256": SCRAMSHA256} {
		m, err := ParseMethod(s)
		if err != nil || m != want || m.String() != s {
			t.Errorf("ParseMethod(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseMethod("password"); err == nil {
		t.Error(`ParseMethod("password") succeeded`)
	}
}

func TestSCRAMSecret(t *testing.T) {
	s1, err := SCRAMSecret("pw")
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := SCRAMSecret("pw")
	if s1 == s2 {
		t.Error("two secrets for one password are equal; the salt is not random")
	}
	if !strings.HasPrefix(s1, "SCRAM-SHA-256$4096:") {
		t.Errorf("secret %q does not use 4096 iterations", s1)
	}
	keys, err := parseSCRAMSecret(s1)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := deriveSCRAMKeys("pw", keys.salt, 4096)
	if string(want.storedKey) != string(keys.storedKey) || string(want.serverKey) != string(keys.serverKey) {
		t.Error("secret does not round-trip")
	}
}

// The plaintext secret's SCRAM keys are derived once per Userlist, however
// many logins run at the same time.
func TestPlaintextSCRAMKeysDerivedOnce(t *testing.T) {
	ul := loadTestUserlist(t)
	s, _ := ul.Lookup("alice")
	var wg sync.WaitGroup
	got := make([]*scramKeys, 8)
	for i := range got {
		wg.Go(func() {
			k, err := s.scram()
			if err != nil {
				t.Error(err)
			}
			got[i] = k
		})
	}
	wg.Wait()
	for _, k := range got {
		if k != got[0] {
			t.Fatal("keys were derived more than once")
		}
	}
	if got[0].iterations != 4096 || len(got[0].salt) != 16 {
		t.Errorf("derived keys: %d iterations, %d byte salt", got[0].iterations, len(got[0].salt))
	}
	// A reload gets a fresh salt.
	s2, _ := loadTestUserlist(t).Lookup("alice")
	k2, _ := s2.scram()
	if string(k2.salt) == string(got[0].salt) {
		t.Error("two loads share a salt")
	}
}
