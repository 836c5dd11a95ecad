package sqlclass

import (
	"cmp"
	"errors"
	"slices"
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Shared results for texts with nothing in them to analyze.
var (
	parseErrorClass = &Class{ParseError: true}
	tooComplexClass = &Class{TooComplex: true}
	emptyClass      = &Class{}
)

// cursorOptHold is CURSOR_OPT_HOLD from Postgres's parsenodes.h.
const cursorOptHold = 0x0020

// listQuoted are the parameters Postgres flags GUC_LIST_QUOTE: it reports
// their list elements as quoted identifiers.
var listQuoted = map[string]bool{
	"search_path":               true,
	"temp_tablespaces":          true,
	"session_preload_libraries": true,
	"shared_preload_libraries":  true,
	"local_preload_libraries":   true,
}

func classify(sql string, p *policy) *Class {
	// The parser reads a C string, so a NUL would hide the rest of the text
	// from it; the protocol cannot carry a NUL inside a query anyway.
	if strings.IndexByte(sql, 0) >= 0 {
		return parseErrorClass
	}
	deep, err := tooDeep(sql)
	if err == nil && !deep {
		var tree *pg_query.ParseResult
		tree, err = parse(sql)
		if err == nil {
			return analyze(tree, p)
		}
	}
	var rejected *parser.Error
	if errors.As(err, &rejected) {
		return parseErrorClass
	}
	return tooComplexClass
}

func analyze(tree *pg_query.ParseResult, p *policy) *Class {
	if len(tree.Stmts) == 0 {
		return emptyClass
	}
	a := analyzer{policy: p, class: &Class{Statements: len(tree.Stmts), Read: true, Batchable: true}}
	for _, raw := range tree.Stmts {
		read, batchable := a.statement(raw.Stmt)
		a.class.Read = a.class.Read && read
		a.class.Batchable = a.class.Batchable && batchable
	}
	return a.class
}

type analyzer struct {
	policy *policy
	class  *Class
}

func (a *analyzer) effect(e Effect) {
	a.class.Effects = append(a.class.Effects, e)
}

// statement classifies one top-level statement and records its effects.
func (a *analyzer) statement(n *pg_query.Node) (read, batchable bool) {
	if n == nil {
		return false, false
	}
	if s, ok := n.Node.(*pg_query.Node_ExplainStmt); ok {
		runs := explainAnalyze(s.ExplainStmt.Options)
		mark := len(a.class.Effects)
		read, batchable = a.statement(s.ExplainStmt.Query)
		if !runs {
			// Without ANALYZE the statement is only planned, so nothing in
			// it happens.
			a.class.Effects = a.class.Effects[:mark]
		}
		return read && !runs, batchable
	}
	read, batchable = a.kind(n)
	deepRead, deepBatchable := a.walk(n)
	return read && deepRead, batchable && deepBatchable
}

// kind classifies a statement by its type and top-level fields, and records
// the effects those show. Any type not listed is neither Read nor Batchable.
func (a *analyzer) kind(n *pg_query.Node) (read, batchable bool) {
	switch s := n.Node.(type) {
	case *pg_query.Node_SelectStmt:
		if into := s.SelectStmt.IntoClause; into != nil {
			// SELECT INTO creates a table; walk sees to Read.
			return false, !a.tempRelation(into.Rel, into.OnCommit)
		}
		return true, true
	case *pg_query.Node_VariableShowStmt:
		return true, true

	case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt,
		*pg_query.Node_MergeStmt, *pg_query.Node_NotifyStmt:
		return false, true

	case *pg_query.Node_TransactionStmt:
		a.transaction(s.TransactionStmt)
	case *pg_query.Node_VariableSetStmt:
		a.set(s.VariableSetStmt)

	case *pg_query.Node_CreateStmt:
		return false, !a.tempRelation(s.CreateStmt.Relation, s.CreateStmt.Oncommit)
	case *pg_query.Node_ViewStmt:
		return false, !a.tempRelation(s.ViewStmt.View, pg_query.OnCommitAction_ONCOMMIT_NOOP)
	case *pg_query.Node_CreateSeqStmt:
		return false, !a.tempRelation(s.CreateSeqStmt.Sequence, pg_query.OnCommitAction_ONCOMMIT_NOOP)
	case *pg_query.Node_CreateTableAsStmt:
		if into := s.CreateTableAsStmt.Into; into != nil {
			return false, !a.tempRelation(into.Rel, into.OnCommit)
		}
	case *pg_query.Node_DropStmt:
		a.drop(s.DropStmt)
		return false, !s.DropStmt.Concurrent
	case *pg_query.Node_IndexStmt:
		return false, !s.IndexStmt.Concurrent
	case *pg_query.Node_AlterTableStmt:
		return false, !detachesConcurrently(s.AlterTableStmt)

	// Objects other than relations can live in pg_temp too.
	case *pg_query.Node_CreateFunctionStmt:
		return false, !a.tempObject(s.CreateFunctionStmt.Funcname)
	case *pg_query.Node_DefineStmt:
		return false, !a.tempObject(s.DefineStmt.Defnames)
	case *pg_query.Node_CreateDomainStmt:
		return false, !a.tempObject(s.CreateDomainStmt.Domainname)
	case *pg_query.Node_CreateEnumStmt:
		return false, !a.tempObject(s.CreateEnumStmt.TypeName)
	case *pg_query.Node_CreateRangeStmt:
		return false, !a.tempObject(s.CreateRangeStmt.TypeName)
	case *pg_query.Node_CompositeTypeStmt:
		if rv := s.CompositeTypeStmt.Typevar; rv != nil && isTempSchema(rv.Schemaname) {
			a.effect(Effect{Kind: TempCreate})
			return false, false
		}
		return false, true

	// DDL that runs inside a transaction block and leaves nothing in the
	// session.
	case *pg_query.Node_AlterSeqStmt, *pg_query.Node_CreateForeignTableStmt,
		*pg_query.Node_TruncateStmt, *pg_query.Node_RefreshMatViewStmt,
		*pg_query.Node_CreateSchemaStmt, *pg_query.Node_RenameStmt,
		*pg_query.Node_AlterObjectSchemaStmt, *pg_query.Node_AlterOwnerStmt,
		*pg_query.Node_AlterObjectDependsStmt, *pg_query.Node_CommentStmt,
		*pg_query.Node_SecLabelStmt, *pg_query.Node_GrantStmt, *pg_query.Node_GrantRoleStmt,
		*pg_query.Node_AlterDefaultPrivilegesStmt, *pg_query.Node_CreateRoleStmt,
		*pg_query.Node_AlterRoleStmt, *pg_query.Node_AlterRoleSetStmt, *pg_query.Node_DropRoleStmt,
		*pg_query.Node_DropOwnedStmt, *pg_query.Node_ReassignOwnedStmt,
		*pg_query.Node_CreateExtensionStmt, *pg_query.Node_AlterExtensionStmt,
		*pg_query.Node_AlterExtensionContentsStmt, *pg_query.Node_AlterFunctionStmt,
		*pg_query.Node_CreateTrigStmt, *pg_query.Node_CreateEventTrigStmt,
		*pg_query.Node_AlterEventTrigStmt, *pg_query.Node_AlterDomainStmt,
		*pg_query.Node_AlterEnumStmt, *pg_query.Node_AlterTypeStmt, *pg_query.Node_RuleStmt,
		*pg_query.Node_CreatePolicyStmt, *pg_query.Node_AlterPolicyStmt,
		*pg_query.Node_CreateStatsStmt, *pg_query.Node_AlterStatsStmt,
		*pg_query.Node_CreateCastStmt, *pg_query.Node_CreateConversionStmt,
		*pg_query.Node_CreateOpClassStmt, *pg_query.Node_CreateOpFamilyStmt,
		*pg_query.Node_AlterOpFamilyStmt, *pg_query.Node_AlterOperatorStmt,
		*pg_query.Node_AlterCollationStmt, *pg_query.Node_ReplicaIdentityStmt,
		*pg_query.Node_AlterTsdictionaryStmt, *pg_query.Node_AlterTsconfigurationStmt,
		*pg_query.Node_CreatePublicationStmt, *pg_query.Node_AlterPublicationStmt:
		return false, true

	case *pg_query.Node_DeclareCursorStmt:
		if s.DeclareCursorStmt.Options&cursorOptHold != 0 {
			a.effect(Effect{Kind: HoldCursor, Name: s.DeclareCursorStmt.Portalname})
		}
	case *pg_query.Node_ClosePortalStmt:
		if name := s.ClosePortalStmt.Portalname; name != "" {
			a.effect(Effect{Kind: CursorClose, Name: name})
		} else {
			a.effect(Effect{Kind: CursorCloseAll})
		}
	case *pg_query.Node_PrepareStmt:
		a.effect(Effect{Kind: Prepare, Name: s.PrepareStmt.Name})
	case *pg_query.Node_DeallocateStmt:
		if d := s.DeallocateStmt; d.Isall || d.Name == "" {
			a.effect(Effect{Kind: DeallocateAll})
		} else {
			a.effect(Effect{Kind: Deallocate, Name: d.Name})
		}
	case *pg_query.Node_LoadStmt:
		a.effect(Effect{Kind: Load, Name: s.LoadStmt.Filename})
	case *pg_query.Node_ListenStmt:
		a.effect(Effect{Kind: Listen, Name: s.ListenStmt.Conditionname})
	case *pg_query.Node_UnlistenStmt:
		if name := s.UnlistenStmt.Conditionname; name != "" {
			a.effect(Effect{Kind: Unlisten, Name: name})
		} else {
			a.effect(Effect{Kind: UnlistenAll})
		}
	case *pg_query.Node_DiscardStmt:
		switch s.DiscardStmt.Target {
		case pg_query.DiscardMode_DISCARD_ALL:
			a.effect(Effect{Kind: DiscardAll})
		case pg_query.DiscardMode_DISCARD_TEMP:
			a.effect(Effect{Kind: DiscardTemp})
		case pg_query.DiscardMode_DISCARD_PLANS:
			a.effect(Effect{Kind: DiscardPlans})
		case pg_query.DiscardMode_DISCARD_SEQUENCES:
			a.effect(Effect{Kind: DiscardSequences})
		}
	}
	return false, false
}

// walk looks through a statement's whole tree for what can hide at any
// depth: function calls, row locks, data-modifying CTEs, SELECT INTO and
// EXECUTE. It records the effects of the calls in text order.
func (a *analyzer) walk(n *pg_query.Node) (read, batchable bool) {
	read, batchable = true, true
	type located struct {
		at     int32
		effect Effect
	}
	var calls []located
	walkTree(n.ProtoReflect(), func(m proto.Message) {
		switch m := m.(type) {
		case *pg_query.FuncCall:
			r, b, e := a.funcCall(m)
			read = read && r
			batchable = batchable && b
			if e.Kind != 0 {
				calls = append(calls, located{m.Location, e})
			}
		case *pg_query.SelectStmt:
			if len(m.LockingClause) > 0 {
				read = false
			}
		case *pg_query.IntoClause:
			read = false
			if isTemp(m.Rel) {
				batchable = false
			}
		case *pg_query.InsertStmt, *pg_query.UpdateStmt, *pg_query.DeleteStmt, *pg_query.MergeStmt:
			read = false
		case *pg_query.ExecuteStmt:
			// Runs a statement prepared earlier in the session.
			batchable = false
		case *pg_query.A_Expr:
			read = read && builtinOperator(m.Name)
		case *pg_query.SubLink:
			read = read && builtinOperator(m.OperName)
		}
	})
	slices.SortStableFunc(calls, func(x, y located) int { return cmp.Compare(x.at, y.at) })
	for _, c := range calls {
		a.effect(c.effect)
	}
	return read, batchable
}

// walkTree calls visit for m and every message below it. Reflection keeps
// it complete across the parser's few hundred node types, including ones
// added by later versions.
func walkTree(m protoreflect.Message, visit func(proto.Message)) {
	visit(m.Interface())
	children := messageFields[m.Descriptor().FullName()]
	for _, od := range children.oneofs {
		if fd := m.WhichOneof(od); fd != nil && fd.Message() != nil {
			walkTree(m.Get(fd).Message(), visit)
		}
	}
	for _, fd := range children.fields {
		if fd.IsList() {
			list := m.Get(fd).List()
			for i := range list.Len() {
				walkTree(list.Get(i).Message(), visit)
			}
		} else if m.Has(fd) {
			walkTree(m.Get(fd).Message(), visit)
		}
	}
}

// childFields are the fields of a message type that can hold messages.
type childFields struct {
	fields []protoreflect.FieldDescriptor // outside oneofs
	oneofs []protoreflect.OneofDescriptor // Node's hundreds of alternatives
}

// messageFields lists each parse tree type's message fields, so that walkTree
// skips the scalars, which Range would box one by one.
var messageFields = func() map[protoreflect.FullName]childFields {
	out := make(map[protoreflect.FullName]childFields)
	msgs := pg_query.File_pg_query_proto.Messages()
	for i := range msgs.Len() {
		md := msgs.Get(i)
		var c childFields
		for j := range md.Oneofs().Len() {
			c.oneofs = append(c.oneofs, md.Oneofs().Get(j))
		}
		for j := range md.Fields().Len() {
			fd := md.Fields().Get(j)
			if fd.Message() != nil && fd.ContainingOneof() == nil && !fd.IsMap() {
				c.fields = append(c.fields, fd)
			}
		}
		out[md.FullName()] = c
	}
	return out
}()

// funcCall judges one function call: whether a Read statement may make it,
// whether a Batchable one may, and the Effect it has, if any.
func (a *analyzer) funcCall(fc *pg_query.FuncCall) (read, batchable bool, e Effect) {
	schema, name := qualifiedName(fc.Funcname)
	builtin := schema == "" || schema == "pg_catalog"
	key := name
	if !builtin {
		key = schema + "." + name
	}
	read = a.policy.read[key]
	batchable = !a.policy.denyBatch[key] && !sessionFunctions[name]
	if !builtin {
		return read, batchable, e
	}
	if kind, ok := advisoryFunctions[name]; ok {
		batchable = false
		if kind != 0 {
			e = Effect{Kind: kind, Name: name, Value: constList(fc.Args)}
		}
	}
	if name == "set_config" {
		batchable = false
		e = setConfig(fc.Args)
	}
	return read, batchable, e
}

// setConfig turns set_config(name, value, is_local) into an Effect. What the
// text does not determine is taken the way that pins: an unknown is_local
// counts as session-level.
func setConfig(args []*pg_query.Node) Effect {
	e := Effect{Kind: Set}
	if len(args) > 0 {
		if s, ok := constText(uncast(args[0])); ok {
			e.Name = strings.ToLower(s)
		}
	}
	if len(args) > 1 {
		v := uncast(args[1])
		if c := v.GetAConst(); c != nil && c.Isnull {
			// A NULL value resets the parameter.
			e.Kind = Reset
		} else if s, ok := constText(v); ok {
			e.Value = s
		}
	}
	if len(args) > 2 {
		e.Local = constBool(uncast(args[2]))
	}
	return e
}

func (a *analyzer) transaction(t *pg_query.TransactionStmt) {
	a.class.TxControl = true
	if t.Kind != pg_query.TransactionStmtKind_TRANS_STMT_BEGIN &&
		t.Kind != pg_query.TransactionStmtKind_TRANS_STMT_START {
		return
	}
	// The options apply in order, so the last READ ONLY or READ WRITE wins.
	readOnly := false
	for _, opt := range t.Options {
		if d := opt.GetDefElem(); d != nil && d.Defname == "transaction_read_only" {
			readOnly = constBool(d.Arg)
		}
	}
	a.class.ReadOnlyBegin = a.class.ReadOnlyBegin || readOnly
}

func (a *analyzer) set(s *pg_query.VariableSetStmt) {
	name := strings.ToLower(s.Name)
	switch s.Kind {
	case pg_query.VariableSetKind_VAR_SET_VALUE:
		a.effect(Effect{Kind: Set, Name: name, Value: setValue(name, s.Args), Local: s.IsLocal})
	case pg_query.VariableSetKind_VAR_SET_CURRENT:
		// SET ... FROM CURRENT: the value is whatever it is now.
		a.effect(Effect{Kind: Set, Name: name, Local: s.IsLocal})
	case pg_query.VariableSetKind_VAR_SET_DEFAULT, pg_query.VariableSetKind_VAR_RESET:
		a.effect(Effect{Kind: Reset, Name: name, Local: s.IsLocal})
	case pg_query.VariableSetKind_VAR_RESET_ALL:
		a.effect(Effect{Kind: ResetAll})
	case pg_query.VariableSetKind_VAR_SET_MULTI:
		// SET TRANSACTION sets the transaction_* parameters for the current
		// transaction; SET SESSION CHARACTERISTICS sets their defaults.
		// SET TRANSACTION SNAPSHOT sets no parameter.
		prefix, local := "", true
		switch s.Name {
		case "TRANSACTION":
		case "SESSION CHARACTERISTICS":
			prefix, local = "default_", false
		default:
			return
		}
		for _, arg := range s.Args {
			d := arg.GetDefElem()
			if d == nil {
				continue
			}
			e := Effect{Kind: Set, Name: prefix + d.Defname, Local: local}
			if c := d.Arg.GetAConst(); c != nil {
				if iv, ok := c.Val.(*pg_query.A_Const_Ival); ok {
					e.Value = onOff(iv.Ival.Ival != 0)
				} else {
					e.Value, _ = constText(d.Arg)
				}
			}
			a.effect(e)
		}
	}
}

// setValue renders SET's arguments the way Postgres flattens them into a
// parameter value: list items joined by ", ", strings quoted as identifiers
// for GUC_LIST_QUOTE parameters. It returns "" for a value it cannot render
// from the text alone (SET TIME ZONE INTERVAL '...').
func setValue(name string, args []*pg_query.Node) string {
	parts := make([]string, 0, len(args))
	for _, arg := range args {
		s, ok := constText(arg)
		if !ok {
			return ""
		}
		if _, isString := arg.GetAConst().GetVal().(*pg_query.A_Const_Sval); isString && listQuoted[name] {
			s = quoteIdent(s)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// tempRelation records the creation of rv if it is temporary and outlives the
// transaction, and reports whether it is temporary at all.
func (a *analyzer) tempRelation(rv *pg_query.RangeVar, onCommit pg_query.OnCommitAction) bool {
	if !isTemp(rv) {
		return false
	}
	if onCommit != pg_query.OnCommitAction_ONCOMMIT_DROP {
		a.effect(Effect{Kind: TempCreate, Name: rv.Relname})
	}
	return true
}

// tempObject records the creation of a temporary non-relation, which has no
// Name: the TempDrop names are relations, and must not match it.
func (a *analyzer) tempObject(names []*pg_query.Node) bool {
	schema, _ := qualifiedName(names)
	if !isTempSchema(schema) {
		return false
	}
	a.effect(Effect{Kind: TempCreate})
	return true
}

// drop records a TempDrop for each table, view or sequence that may be
// temporary: an unqualified name finds a temporary relation first.
func (a *analyzer) drop(d *pg_query.DropStmt) {
	switch d.RemoveType {
	case pg_query.ObjectType_OBJECT_TABLE, pg_query.ObjectType_OBJECT_VIEW, pg_query.ObjectType_OBJECT_SEQUENCE:
	default:
		return
	}
	for _, obj := range d.Objects {
		schema, name := qualifiedName(obj.GetList().GetItems())
		if name == "" || (schema != "" && !isTempSchema(schema)) {
			continue
		}
		a.effect(Effect{Kind: TempDrop, Name: name})
	}
}

func isTemp(rv *pg_query.RangeVar) bool {
	return rv != nil && (rv.Relpersistence == "t" || isTempSchema(rv.Schemaname))
}

// isTempSchema reports pg_temp, the alias of the session's temporary schema,
// and pg_temp_N, its real name.
func isTempSchema(schema string) bool {
	return schema == "pg_temp" || strings.HasPrefix(schema, "pg_temp_")
}

func detachesConcurrently(s *pg_query.AlterTableStmt) bool {
	for _, c := range s.Cmds {
		cmd := c.GetAlterTableCmd()
		switch cmd.GetSubtype() {
		case pg_query.AlterTableType_AT_DetachPartitionFinalize:
			return true
		case pg_query.AlterTableType_AT_DetachPartition:
			if cmd.GetDef().GetPartitionCmd().GetConcurrent() {
				return true
			}
		}
	}
	return false
}

// explainAnalyze reports whether EXPLAIN options ask for the statement to run.
// An option value it cannot read counts as yes.
func explainAnalyze(opts []*pg_query.Node) bool {
	for _, opt := range opts {
		d := opt.GetDefElem()
		if d == nil || d.Defname != "analyze" {
			continue
		}
		switch arg := d.Arg.GetNode().(type) {
		case nil:
			return true
		case *pg_query.Node_String_:
			if on, ok := parseBool(arg.String_.Sval); !ok || on {
				return true
			}
		case *pg_query.Node_Integer:
			if arg.Integer.Ival != 0 {
				return true
			}
		default:
			return true
		}
	}
	return false
}

// builtinOperator reports whether an operator name can only be a built-in:
// unqualified or in pg_catalog. A user's operator in another schema runs a
// function the allowlist knows nothing of.
func builtinOperator(names []*pg_query.Node) bool {
	schema, _ := qualifiedName(names)
	return schema == "" || schema == "pg_catalog"
}

// qualifiedName splits a dotted name list into its schema ("" if none) and
// last part.
func qualifiedName(names []*pg_query.Node) (schema, name string) {
	if len(names) == 0 {
		return "", ""
	}
	name = names[len(names)-1].GetString_().GetSval()
	if len(names) > 1 {
		schema = names[len(names)-2].GetString_().GetSval()
	}
	return schema, name
}

func uncast(n *pg_query.Node) *pg_query.Node {
	for {
		tc := n.GetTypeCast()
		if tc == nil {
			return n
		}
		n = tc.Arg
	}
}

// constText returns the text of a constant as Postgres would read it.
func constText(n *pg_query.Node) (string, bool) {
	c := n.GetAConst()
	if c == nil || c.Isnull {
		return "", false
	}
	switch v := c.Val.(type) {
	case *pg_query.A_Const_Sval:
		return v.Sval.GetSval(), true
	case *pg_query.A_Const_Ival:
		return strconv.FormatInt(int64(v.Ival.GetIval()), 10), true
	case *pg_query.A_Const_Fval:
		return v.Fval.GetFval(), true
	case *pg_query.A_Const_Boolval:
		return strconv.FormatBool(v.Boolval.GetBoolval()), true
	}
	return "", false
}

// constList renders constant arguments joined by ", ", or "" if any is not a
// constant.
func constList(args []*pg_query.Node) string {
	parts := make([]string, 0, len(args))
	for _, arg := range args {
		s, ok := constText(arg)
		if !ok {
			return ""
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// constBool reports whether n is a constant that Postgres reads as true.
func constBool(n *pg_query.Node) bool {
	c := n.GetAConst()
	if c == nil || c.Isnull {
		return false
	}
	switch v := c.Val.(type) {
	case *pg_query.A_Const_Boolval:
		return v.Boolval.GetBoolval()
	case *pg_query.A_Const_Ival:
		return v.Ival.GetIval() != 0
	case *pg_query.A_Const_Sval:
		on, ok := parseBool(v.Sval.GetSval())
		return ok && on
	}
	return false
}

// parseBool accepts what Postgres's parse_bool does: true, false, yes, no,
// on, off, 1, 0 and unambiguous prefixes, in any case.
func parseBool(s string) (value, ok bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	prefixOf := func(word string, min int) bool {
		return len(s) >= min && strings.HasPrefix(word, s)
	}
	switch {
	case s == "1":
		return true, true
	case s == "0":
		return false, true
	case prefixOf("true", 1), prefixOf("yes", 1), prefixOf("on", 2):
		return true, true
	case prefixOf("false", 1), prefixOf("no", 1), prefixOf("off", 2):
		return false, true
	}
	return false, false
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

// quoteIdent quotes an identifier the way Postgres's quote_identifier does,
// except that it does not know the keywords: a list item named like a reserved
// word is reported quoted by Postgres and bare here.
func quoteIdent(s string) string {
	safe := s != ""
	for i, r := range s {
		if !(r >= 'a' && r <= 'z' || r == '_' || i > 0 && r >= '0' && r <= '9') {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
