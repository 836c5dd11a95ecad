package benchmarks

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/go-sql-driver/mysql"
)

// A target whose DSN starts with mysql:// is a MySQL or MariaDB server measured through
// go-sql-driver/mysql directly: the baseline for asyncgate in front of MySQL. The same scripts
// run on it, with $n placeholders turned into ?: -M simple sends text queries (values inlined),
// -M extended prepares and closes a server-side statement per query as database/sql does for a
// query with arguments, and -M prepared keeps one per connection and statement text.

func isMySQLDSN(dsn string) bool { return strings.HasPrefix(dsn, "mysql://") }

// openMySQL turns mysql://user:pass@host:port/db?params into a database/sql handle; each client
// holds one of its connections.
func openMySQL(dsn string, clients int) (*sql.DB, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return nil, err
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "3306")
	}
	pass, _ := u.User.Password()
	tail := ""
	if u.RawQuery != "" {
		tail = "?" + u.RawQuery
	}
	cfg, err := mysql.ParseDSN(fmt.Sprintf("%s@tcp(%s)/%s%s", u.User.Username(), host, strings.TrimPrefix(u.Path, "/"), tail))
	if err != nil {
		return nil, err
	}
	cfg.Passwd = pass
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(clients)
	db.SetMaxIdleConns(clients)
	return db, nil
}

// mysqlConn is one benchmark client's MySQL connection.
type mysqlConn struct {
	conn     *sql.Conn
	prepared bool
	stmts    map[string]*sql.Stmt
	inTx     bool
}

var placeholder = regexp.MustCompile(`\$([0-9]+)`)

// mysqlQuery turns $n placeholders into ?, returning the arguments in the order of the ?s.
func mysqlQuery(q string, args []any) (string, []any) {
	if len(args) == 0 {
		return q, nil
	}
	var ordered []any
	out := placeholder.ReplaceAllStringFunc(q, func(m string) string {
		n, _ := strconv.Atoi(m[1:])
		if n >= 1 && n <= len(args) {
			ordered = append(ordered, args[n-1])
		}
		return "?"
	})
	return out, ordered
}

func (m *mysqlConn) query(ctx context.Context, q string, args []any) error {
	q, args = mysqlQuery(q, args)
	switch w, _, _ := strings.Cut(strings.ToUpper(strings.TrimSpace(q)), " "); strings.TrimSuffix(w, ";") {
	case "BEGIN", "START":
		m.inTx = true
	case "COMMIT", "ROLLBACK", "END":
		m.inTx = false
	}
	var rows *sql.Rows
	var err error
	if m.prepared && len(args) > 0 {
		st, ok := m.stmts[q]
		if !ok {
			if st, err = m.conn.PrepareContext(ctx, q); err != nil {
				return err
			}
			m.stmts[q] = st
		}
		rows, err = st.QueryContext(ctx, args...)
	} else {
		rows, err = m.conn.QueryContext(ctx, q, args...)
	}
	if err != nil {
		return err
	}
	for rows.Next() {
	}
	rows.Close()
	return rows.Err()
}

func (m *mysqlConn) close() {
	for _, st := range m.stmts {
		st.Close()
	}
	m.conn.Close()
}
