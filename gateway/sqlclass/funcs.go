package sqlclass

// readFunctions are built-in functions that neither write nor change session
// state, so a SELECT may call them and still go to a replica. The list is
// deliberately short and boring: a function missing here only costs a trip
// to the primary, one wrongly present would send a write to a replica (where
// it fails). Functions the parser turns SQL syntax into (EXTRACT, SUBSTRING
// ... FROM, TRIM, POSITION, AT TIME ZONE, OVERLAY) are included under the
// names it gives them.
var readFunctions = []string{
	// Aggregates.
	"count", "sum", "avg", "min", "max", "array_agg", "string_agg",
	"bool_and", "bool_or", "every", "bit_and", "bit_or", "bit_xor",
	"json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg",
	"stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp",
	"percentile_cont", "percentile_disc", "mode", "corr", "covar_pop", "covar_samp",

	// Window functions.
	"row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile",
	"lag", "lead", "first_value", "last_value", "nth_value",

	// Strings.
	"lower", "upper", "initcap", "length", "char_length", "character_length",
	"octet_length", "bit_length", "substr", "substring", "trim", "btrim",
	"ltrim", "rtrim", "concat", "concat_ws", "replace", "split_part", "left",
	"right", "position", "strpos", "starts_with", "lpad", "rpad", "repeat",
	"reverse", "translate", "overlay", "format", "quote_ident", "quote_literal",
	"quote_nullable", "ascii", "chr", "to_hex", "encode", "decode",
	"regexp_replace", "regexp_match", "regexp_matches", "regexp_like",
	"regexp_count", "regexp_substr", "regexp_instr", "regexp_split_to_array",
	"regexp_split_to_table", "string_to_array", "array_to_string",
	"md5", "sha224", "sha256", "sha384", "sha512", "normalize", "is_normalized",

	// Numbers.
	"abs", "round", "floor", "ceil", "ceiling", "trunc", "mod", "div", "sign",
	"sqrt", "cbrt", "power", "pow", "exp", "ln", "log", "log10", "pi",
	"degrees", "radians", "sin", "cos", "tan", "asin", "acos", "atan", "atan2",
	"gcd", "lcm", "width_bucket", "random", "random_normal",

	// Dates and times.
	"now", "clock_timestamp", "statement_timestamp", "transaction_timestamp",
	"date_trunc", "date_part", "date_bin", "extract", "to_char", "to_date",
	"to_timestamp", "to_number", "age", "make_date", "make_time",
	"make_timestamp", "make_timestamptz", "make_interval", "justify_days",
	"justify_hours", "justify_interval", "isfinite", "timezone",

	// Arrays and sets.
	"array_length", "array_lower", "array_upper", "array_ndims", "array_dims",
	"cardinality", "array_position", "array_positions", "array_append",
	"array_prepend", "array_cat", "array_remove", "array_replace", "array_fill",
	"trim_array", "unnest", "generate_series", "generate_subscripts",

	// JSON.
	"to_json", "to_jsonb", "row_to_json", "array_to_json",
	"json_build_object", "jsonb_build_object", "json_build_array",
	"jsonb_build_array", "json_object", "jsonb_object",
	"json_extract_path", "json_extract_path_text", "jsonb_extract_path",
	"jsonb_extract_path_text", "json_array_length", "jsonb_array_length",
	"json_array_elements", "jsonb_array_elements", "json_array_elements_text",
	"jsonb_array_elements_text", "json_each", "jsonb_each", "json_each_text",
	"jsonb_each_text", "json_object_keys", "jsonb_object_keys", "json_typeof",
	"jsonb_typeof", "json_strip_nulls", "jsonb_strip_nulls", "jsonb_pretty",
	"jsonb_set", "jsonb_set_lax", "jsonb_insert", "json_populate_record",
	"jsonb_populate_record", "json_populate_recordset",
	"jsonb_populate_recordset", "json_to_record", "jsonb_to_record",
	"json_to_recordset", "jsonb_to_recordset", "jsonb_path_exists",
	"jsonb_path_match", "jsonb_path_query", "jsonb_path_query_array",
	"jsonb_path_query_first",

	// Session and server information.
	"version", "current_setting", "current_database", "current_schema",
	"current_schemas", "current_user", "session_user", "system_user",
	"pg_typeof", "format_type", "gen_random_uuid", "num_nulls", "num_nonnulls",
}

// advisoryFunctions are the built-in advisory lock functions. Every call to
// one makes a statement not Batchable (even a transaction-level lock must not
// be held by a unit that mixes clients); session-level ones are also Effects.
var advisoryFunctions = map[string]EffectKind{
	"pg_advisory_lock":                 AdvisoryLock,
	"pg_advisory_lock_shared":          AdvisoryLock,
	"pg_try_advisory_lock":             AdvisoryLock,
	"pg_try_advisory_lock_shared":      AdvisoryLock,
	"pg_advisory_unlock":               AdvisoryUnlock,
	"pg_advisory_unlock_shared":        AdvisoryUnlock,
	"pg_advisory_unlock_all":           AdvisoryUnlockAll,
	"pg_advisory_xact_lock":            0,
	"pg_advisory_xact_lock_shared":     0,
	"pg_try_advisory_xact_lock":        0,
	"pg_try_advisory_xact_lock_shared": 0,
}

// sessionFunctions change session state without being an Effect the gateway
// tracks; calling one makes a statement not Batchable. set_config and the
// advisory functions are handled apart because they also report Effects.
var sessionFunctions = map[string]bool{
	"setseed": true, // seeds random() for the rest of the session
	// dblink keeps named connections open for the session.
	"dblink_connect":    true,
	"dblink_connect_u":  true,
	"dblink_disconnect": true,
}
