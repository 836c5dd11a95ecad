package auth

import (
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"strconv"

	"github.com/jackc/pgx/v5/pgproto3"
)

type exchangeState int

const (
	stateNew        exchangeState = iota
	stateMD5                      // sent AuthenticationMD5Password
	stateSCRAMFirst               // sent AuthenticationSASL
	stateSCRAMFinal               // sent AuthenticationSASLContinue
	stateDone                     // authenticated or failed
)

// Exchange runs one client's authentication. Not safe for concurrent use.
//
// For a user that is not in the userlist, or whose secret cannot serve the
// method, the exchange still runs to the end against a fake secret and then
// fails with the same error as a wrong password, so that neither the messages
// nor the timing tell which users exist. Error.Detail has the real reason.
type Exchange struct {
	method Method
	user   string
	secret Secret
	known  bool
	state  exchangeState

	md5Salt [4]byte

	keys        *scramKeys
	failReason  string // non-empty: keys are fake and the login must fail
	gs2Header   []byte
	clientBare  []byte
	nonce       []byte // client nonce + server nonce
	serverFirst []byte
}

// NewExchange starts authenticating user with method m against users, which
// may be nil with Trust.
func NewExchange(m Method, users *Userlist, user string) *Exchange {
	secret, known := users.Lookup(user)
	return &Exchange{method: m, user: user, secret: secret, known: known}
}

// Start returns the first message to send to the client (encoded, with type
// byte and length): AuthenticationMD5Password, AuthenticationSASL, or for
// trust AuthenticationOk with done=true.
func (e *Exchange) Start() (out []byte, done bool, err error) {
	if e.state != stateNew {
		return e.fail(&Error{Code: CodeInternalError, Message: "authentication exchange already started"})
	}
	switch e.method {
	case Trust:
		e.state = stateDone
		return encode(&pgproto3.AuthenticationOk{}), true, nil
	case MD5:
		salt, err := randomBytes(len(e.md5Salt))
		if err != nil {
			return e.fail(&Error{Code: CodeInternalError, Message: "could not generate random salt", Detail: err.Error()})
		}
		copy(e.md5Salt[:], salt)
		e.state = stateMD5
		return encode(&pgproto3.AuthenticationMD5Password{Salt: e.md5Salt}), false, nil
	case SCRAMSHA256:
		e.state = stateSCRAMFirst
		return encode(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}}), false, nil
	}
	return e.fail(&Error{Code: CodeInternalError, Message: "unsupported authentication method " + e.method.String()})
}

// Next takes the body (without type byte and length) of the client's next
// message, which is always of type 'p' (PasswordMessage, SASLInitialResponse
// or SASLResponse depending on the step), and returns the next message to
// send. done=true with a nil error means authenticated, and out then ends
// with AuthenticationOk. Any error ends the exchange; it is an *Error. Next
// does not keep body.
func (e *Exchange) Next(body []byte) (out []byte, done bool, err error) {
	if len(body) > MaxMessageLen {
		return e.fail(protocolViolation("authentication message longer than %d bytes", MaxMessageLen))
	}
	switch e.state {
	case stateMD5:
		return e.md5Response(body)
	case stateSCRAMFirst:
		return e.scramFirst(body)
	case stateSCRAMFinal:
		return e.scramFinal(body)
	}
	return e.fail(protocolViolation("unexpected authentication message"))
}

func (e *Exchange) fail(err *Error) ([]byte, bool, error) {
	e.state = stateDone
	return nil, true, err
}

func (e *Exchange) md5Response(body []byte) ([]byte, bool, error) {
	// PasswordMessage.Decode stops at the first NUL; PostgreSQL insists that
	// the string fills the message exactly.
	if len(body) == 0 || bytes.IndexByte(body, 0) != len(body)-1 {
		return e.fail(protocolViolation("invalid password packet size"))
	}
	var msg pgproto3.PasswordMessage
	if err := msg.Decode(body); err != nil {
		return e.fail(protocolViolation("invalid password message: %v", err))
	}

	// stored is hex(md5(password + user)), or a fake one that cannot match.
	var stored []byte
	detail := ""
	switch {
	case !e.known:
		detail = "user not found in userlist"
	case e.secret.kind == KindPlain:
		stored = md5Hex([]byte(e.secret.value + e.user))
	case e.secret.kind == KindMD5:
		stored = []byte(e.secret.value[3:])
	default:
		detail = "user has a " + e.secret.kind.String() + " secret; md5 authentication needs a plaintext or md5 secret"
	}
	if detail != "" {
		stored = []byte(hex.EncodeToString(dummyBytes("md5", e.user)[:md5.Size]))
	}
	want := append([]byte("md5"), md5Hex(append(stored, e.md5Salt[:]...))...)
	match := subtle.ConstantTimeCompare([]byte(msg.Password), want) == 1
	if detail != "" {
		return e.fail(authFailed(e.user, detail))
	}
	if !match {
		return e.fail(authFailed(e.user, "wrong password (md5)"))
	}
	e.state = stateDone
	return encode(&pgproto3.AuthenticationOk{}), true, nil
}

func md5Hex(b []byte) []byte {
	sum := md5.Sum(b)
	return []byte(hex.EncodeToString(sum[:]))
}

func (e *Exchange) scramFirst(body []byte) ([]byte, bool, error) {
	var msg pgproto3.SASLInitialResponse
	if err := msg.Decode(body); err != nil {
		return e.fail(protocolViolation("invalid SASLInitialResponse: %v", err))
	}
	// Decode skips the length of the initial response; check it, which also
	// rejects -1 (no initial response): SCRAM clients always send one.
	lenAt := len(msg.AuthMechanism) + 1
	if n := int32(binary.BigEndian.Uint32(body[lenAt:])); int(n) != len(msg.Data) {
		return e.fail(protocolViolation("invalid SASLInitialResponse: response length %d, message has %d bytes", n, len(msg.Data)))
	}
	if msg.AuthMechanism != scramMechanism {
		return e.fail(protocolViolation("client selected an invalid SASL authentication mechanism"))
	}
	cf, perr := parseClientFirst(msg.Data)
	if perr != nil {
		return e.fail(perr)
	}

	switch {
	case !e.known:
		e.failReason = "user not found in userlist"
	case e.secret.kind == KindPlain || e.secret.kind == KindSCRAM:
		keys, err := e.secret.scram()
		if err != nil {
			return e.fail(&Error{Code: CodeInternalError, Message: "could not derive SCRAM keys", Detail: err.Error()})
		}
		e.keys = keys
	default:
		e.failReason = "user has a " + e.secret.kind.String() + " secret; scram-sha-256 authentication needs a plaintext or SCRAM secret"
	}
	if e.failReason != "" {
		e.keys = dummySCRAMKeys(e.user)
	}

	raw, err := randomBytes(scramServerNonce)
	if err != nil {
		return e.fail(&Error{Code: CodeInternalError, Message: "could not generate SCRAM nonce", Detail: err.Error()})
	}
	// body belongs to the caller: copy what the next step needs.
	e.gs2Header = bytes.Clone(cf.gs2Header)
	e.clientBare = bytes.Clone(cf.bare)
	e.nonce = append(bytes.Clone(cf.nonce), base64.StdEncoding.EncodeToString(raw)...)
	e.serverFirst = []byte("r=" + string(e.nonce) + ",s=" + b64.EncodeToString(e.keys.salt) + ",i=" + strconv.Itoa(e.keys.iterations))
	e.state = stateSCRAMFinal
	return encode(&pgproto3.AuthenticationSASLContinue{Data: e.serverFirst}), false, nil
}

func (e *Exchange) scramFinal(body []byte) ([]byte, bool, error) {
	var msg pgproto3.SASLResponse
	if err := msg.Decode(body); err != nil {
		return e.fail(protocolViolation("invalid SASLResponse: %v", err))
	}
	cf, perr := parseClientFinal(msg.Data)
	if perr != nil {
		return e.fail(perr)
	}
	// Without channel binding the c= input is just the gs2 header.
	if !bytes.Equal(cf.binding, e.gs2Header) {
		return e.fail(malformedSCRAM("channel binding data does not match the gs2 header"))
	}
	if !bytes.Equal(cf.nonce, e.nonce) {
		return e.fail(malformedSCRAM("nonce does not match"))
	}

	authMessage := bytes.Join([][]byte{e.clientBare, e.serverFirst, cf.withoutProof}, []byte(","))
	clientSignature := hmacSHA256(e.keys.storedKey, authMessage)
	clientKey := make([]byte, scramKeyLen)
	subtle.XORBytes(clientKey, cf.proof, clientSignature)
	storedKey := sha256.Sum256(clientKey)
	match := subtle.ConstantTimeCompare(storedKey[:], e.keys.storedKey) == 1
	if e.failReason != "" {
		return e.fail(authFailed(e.user, e.failReason))
	}
	if !match {
		return e.fail(authFailed(e.user, "wrong password (SCRAM proof does not match)"))
	}

	serverSignature := hmacSHA256(e.keys.serverKey, authMessage)
	e.state = stateDone
	out := encode(&pgproto3.AuthenticationSASLFinal{Data: []byte("v=" + b64.EncodeToString(serverSignature))})
	return append(out, encode(&pgproto3.AuthenticationOk{})...), true, nil
}

// encode encodes one of the small authentication messages, which cannot fail.
func encode(msg pgproto3.BackendMessage) []byte {
	b, err := msg.Encode(nil)
	if err != nil {
		panic("auth: encode " + err.Error())
	}
	return b
}
