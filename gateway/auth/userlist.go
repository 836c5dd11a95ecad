package auth

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
)

// SecretKind tells how a userlist secret is stored.
type SecretKind int

const (
	KindPlain SecretKind = iota + 1 // plaintext password
	KindMD5                         // "md5" + hex(md5(password + username))
	KindSCRAM                       // SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>
)

func (k SecretKind) String() string {
	switch k {
	case KindPlain:
		return "plain"
	case KindMD5:
		return "md5"
	case KindSCRAM:
		return "SCRAM-SHA-256"
	}
	return fmt.Sprintf("SecretKind(%d)", int(k))
}

// Secret is one user's secret from a userlist. The zero value is no secret.
type Secret struct {
	kind  SecretKind
	value string // plaintext password, or "md5" + lowercase hex; empty for SCRAM

	// scram holds the SCRAM keys: parsed for KindSCRAM, derived on first use
	// for KindPlain (PBKDF2 is too slow to run per login).
	scram func() (*scramKeys, error)
}

// Kind reports how the secret is stored.
func (s Secret) Kind() SecretKind { return s.kind }

// String returns the kind only, so that a Secret can be logged without
// leaking it.
func (s Secret) String() string { return s.kind.String() + " secret" }

// Userlist maps user names to secrets. It is immutable once parsed and safe
// for concurrent use; reload by parsing a new one and swapping the pointer.
type Userlist struct {
	secrets map[string]Secret
}

// LoadUserlist reads a userlist file; see ParseUserlist for the format.
func LoadUserlist(path string) (*Userlist, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth: load userlist: %w", err)
	}
	defer f.Close()
	ul, err := parseUserlist(f)
	if err != nil {
		return nil, fmt.Errorf("auth: userlist %s: %w", path, err)
	}
	return ul, nil
}

// ParseUserlist parses PgBouncer's userlist.txt format: one
//
//	"user" "secret"
//
// per line, where "" inside a quoted string stands for one quote. Blank lines
// and lines starting with ';' or '#' are ignored. The secret is a plaintext
// password, "md5" followed by 32 hex digits, or a SCRAM-SHA-256 secret as
// stored in pg_authid. Unlike PgBouncer, text after the secret, empty user
// names or secrets and duplicate users are errors, so that a typo does not
// silently lock a user out.
func ParseUserlist(r io.Reader) (*Userlist, error) {
	ul, err := parseUserlist(r)
	if err != nil {
		return nil, fmt.Errorf("auth: userlist: %w", err)
	}
	return ul, nil
}

func parseUserlist(r io.Reader) (*Userlist, error) {
	ul := &Userlist{secrets: make(map[string]Secret)}
	firstLine := make(map[string]int)
	sc := bufio.NewScanner(r)
	lineno := 0
	for sc.Scan() {
		lineno++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == ';' || line[0] == '#' {
			continue
		}
		user, secret, err := parseUserlistLine(line)
		if err == nil {
			if prev, dup := firstLine[user]; dup {
				err = fmt.Errorf("duplicate user %q (first on line %d)", user, prev)
			}
		}
		var s Secret
		if err == nil {
			s, err = parseSecret(secret)
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", lineno, err)
		}
		ul.secrets[user] = s
		firstLine[user] = lineno
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", lineno+1, err)
	}
	return ul, nil
}

func parseUserlistLine(line string) (user, secret string, err error) {
	user, rest, err := cutQuoted(line)
	if err != nil {
		return "", "", fmt.Errorf("user: %w", err)
	}
	if user == "" {
		return "", "", errors.New("empty user name")
	}
	trimmed := strings.TrimLeft(rest, " \t")
	if trimmed == "" {
		return "", "", fmt.Errorf("missing secret for user %q", user)
	}
	if len(trimmed) == len(rest) {
		return "", "", errors.New("expected whitespace after user name")
	}
	secret, rest, err = cutQuoted(trimmed)
	if err != nil {
		return "", "", fmt.Errorf("secret: %w", err)
	}
	if secret == "" {
		return "", "", fmt.Errorf("empty secret for user %q", user)
	}
	if strings.TrimSpace(rest) != "" {
		return "", "", fmt.Errorf("unexpected text after secret: %q", rest)
	}
	return user, secret, nil
}

// cutQuoted reads a "quoted string" with "" as the escaped quote from the
// start of s.
func cutQuoted(s string) (value, rest string, err error) {
	if s == "" || s[0] != '"' {
		return "", "", errors.New(`expected a "quoted string"`)
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		if s[i] != '"' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '"' {
			b.WriteByte('"')
			i++
			continue
		}
		return b.String(), s[i+1:], nil
	}
	return "", "", errors.New("unterminated quoted string")
}

func parseSecret(s string) (Secret, error) {
	if strings.HasPrefix(s, scramPrefix) {
		keys, err := parseSCRAMSecret(s)
		if err != nil {
			return Secret{}, err
		}
		return Secret{kind: KindSCRAM, scram: func() (*scramKeys, error) { return keys, nil }}, nil
	}
	if isMD5Secret(s) {
		return Secret{kind: KindMD5, value: strings.ToLower(s)}, nil
	}
	salt, err := randomBytes(scramSaltLen)
	if err != nil {
		return Secret{}, err
	}
	return Secret{
		kind:  KindPlain,
		value: s,
		scram: sync.OnceValues(func() (*scramKeys, error) {
			return deriveSCRAMKeys(s, salt, scramDefaultIterations)
		}),
	}, nil
}

func isMD5Secret(s string) bool {
	if len(s) != 3+32 || !strings.HasPrefix(s, "md5") {
		return false
	}
	for _, c := range []byte(s[3:]) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// Lookup returns user's secret.
func (ul *Userlist) Lookup(user string) (Secret, bool) {
	if ul == nil {
		return Secret{}, false
	}
	s, ok := ul.secrets[user]
	return s, ok
}

// Users returns the user names, sorted.
func (ul *Userlist) Users() []string {
	if ul == nil {
		return nil
	}
	users := make([]string, 0, len(ul.secrets))
	for u := range ul.secrets {
		users = append(users, u)
	}
	slices.Sort(users)
	return users
}

// Password returns user's plaintext password, if the userlist stores one. The
// pool needs it to log into a backend as the client's own user.
func (ul *Userlist) Password(user string) (string, bool) {
	s, ok := ul.Lookup(user)
	if !ok || s.kind != KindPlain {
		return "", false
	}
	return s.value, true
}
