//! A column of every built-in type and values that are hard to carry (limits, NaN/±Infinity, -0, 24:00, BC dates,
//! infinite timestamps, mixed intervals, duplicate JSON keys, NULLs in arrays, empty ranges, a 60,000-character
//! TOASTed text, …): the fidelity tests put them in one table; the benchmark's value comparison gives each column a
//! table of its own, so one tool's failure on one type does not hide the others.

/// One column: its name as an SQL identifier, its type (`{s}` stands for the schema holding the custom types of
/// [`custom_types`]), an ordinary value and, where the type has one, a special value (NaN, ±Infinity) as SQL.
pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    pub value: &'static str,
    pub special: Option<&'static str>,
}

const fn col(name: &'static str, ty: &'static str, value: &'static str) -> Column {
    Column { name, ty, value, special: None }
}

const fn special(name: &'static str, ty: &'static str, value: &'static str, special: &'static str) -> Column {
    Column { name, ty, value, special: Some(special) }
}

/// The columns after the key, in table order.
pub const COLUMNS: &[Column] = &[
    col(r#""select""#, "smallint", "-32768"),
    col(r#""Int""#, "integer", "2147483647"),
    col(r#""BIG""#, "bigint", "-9223372036854775808"),
    special("num", "numeric", "(repeat('9', 600) || '.' || repeat('1', 400))::numeric", "'NaN'"),
    special("num_ps", "numeric(12,4)", "'-12345678.1234'", "'NaN'"),
    col("mny", "money", "'-92233720368547758.08'"),
    special("dnum", "{s}.money_num", "'0.10'", "'NaN'"),
    special("r4", "real", "'-0'", "'Infinity'"),
    special("r8", "double precision", "'1.7976931348623157e308'", "'-Infinity'"),
    col(r#""tëxt""#, "text", r#"E'tab\there ü 🎉 "quote" \\ back ''single'' \u200b zero-width\nnew line'"#),
    col("ch", "char(5)", "'ab'"),
    col("vc", "varchar(10)", "'ünï'"),
    col(r#""user""#, "varchar", "'x'"),
    col("bin", "bytea", r"'\x00ff10'::bytea"),
    col("flag", "boolean", "true"),
    col("d", "date", "'0044-03-15 BC'"),
    col("t", "time", "'24:00:00'"),
    col("t3", "time(3)", "'12:34:56.789'"),
    col("ttz", "timetz", "'23:59:59.999999-15:59'"),
    col("ts", "timestamp", "'infinity'"),
    col("ts0", "timestamp(0)", "'2026-01-01 12:00:00'"),
    col("tstz", "timestamptz", "'2026-03-01 12:00:00.123456+05:30'"),
    col("tstz2", "timestamptz(2)", "'-infinity'"),
    col("iv", "interval", "'1 year 2 mons -3 days 04:05:06.789'"),
    col("iv_ym", "interval year to month", "'-5 years 3 months'"),
    col("iv_s", "interval second(2)", "'12.34 seconds'"),
    col("u", "uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
    col("j", "json", r#"'{"b": 1,  "a": [1, 2.50, "x"], "a": 2}'"#),
    col("jb", "jsonb", r#"'{"z": 1.500, "a": null, "u": "ü\n"}'"#),
    col("x", "xml", r#"'<r a="1">ü &amp; <b/></r>'"#),
    col("arr_i", "int[]", "'{{1,NULL},{3,4}}'"),
    col("arr_t", "text[]", r#"'{"a,b","c\"d",NULL,"NULL",""}'"#),
    col("arr_c", "char(2)[]", "'{ab,c}'"),
    col("arr_n", "numeric(5,2)[]", "'{1.5,NaN}'"),
    col("arr_b", "bit(2)[]", "'{10,01}'"),
    col("r_i", "int4range", "'[1,10)'"),
    col("r_n", "numrange", "'(1.5,2.25]'"),
    col("r_ts", "tstzrange", "'[2026-01-01 00:00+00,infinity)'"),
    col("r_d", "daterange", "'empty'"),
    col("r_8", "int8range", "'(,5]'"),
    col("r_tsl", "tsrange", "'[2026-01-01,2026-02-01)'"),
    col("mr", "int4multirange", "'{[1,3),[5,7)}'"),
    col("mr_d", "datemultirange", "'{}'"),
    col("ip", "inet", "'2001:db8::1/64'"),
    col("net", "cidr", "'10.0.0.0/8'"),
    col("mac", "macaddr", "'08:00:2b:01:02:03'"),
    col("mac8", "macaddr8", "'08:00:2b:01:02:03:04:05'"),
    col("pt", "point", "'(1.5,-2)'"),
    col("ln", "line", "'{1,-1,0}'"),
    col("ls", "lseg", "'[(0,0),(1,1)]'"),
    col("bx", "box", "'(1,1),(0,0)'"),
    col("pth", "path", "'[(0,0),(1,1),(2,0)]'"),
    col("pg", "polygon", "'((0,0),(1,1),(1,0))'"),
    col("ci", "circle", "'<(0,0),1.5>'"),
    col("b4", "bit(4)", "B'1010'"),
    col("vb", "varbit(10)", "B'101'"),
    col("tv", "tsvector", "'a fat cat:1A sat'"),
    col("tq", "tsquery", "'fat & (rat | cat)'"),
    col("mood", r#"{s}."Mood""#, "'happy ☺'"),
    col("pos", "{s}.posint", "42"),
    col("c5", "{s}.code5", "'ab'"),
    col("pr", "{s}.pair", r#"'(1,"x, y",NaN)'"#),
    col("lsn", "pg_lsn", "'16/B374D848'"),
    col("o", "oid", "4294967295"),
    col("doc", "text", "repeat('ü', 60000)"),
];

/// The custom types some columns use (an enum, domains, a composite), in `schema` (an SQL identifier).
pub fn custom_types(schema: &str) -> String {
    format!(
        r#"CREATE TYPE {schema}."Mood" AS ENUM ('sad', 'ok', 'happy ☺');
CREATE DOMAIN {schema}.posint AS integer CHECK (VALUE > 0);
CREATE DOMAIN {schema}.code5 AS char(5);
CREATE DOMAIN {schema}.money_num AS numeric;
CREATE TYPE {schema}.pair AS (a int, b text, c numeric);
"#
    )
}

impl Column {
    /// The type, with the custom types' schema filled in.
    pub fn ty(&self, schema: &str) -> String {
        self.ty.replace("{s}", schema)
    }

    /// The value of a row: the special one when asked and the type has one.
    pub fn value(&self, special: bool) -> &'static str {
        if special {
            self.special.unwrap_or(self.value)
        } else {
            self.value
        }
    }

    /// A plain lower-case name for a table of this column alone (`tëxt` → `txt`, `"select"` → `select`).
    pub fn plain_name(&self) -> String {
        self.name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>().to_lowercase()
    }
}

/// `col type, col type, …` of every column, for a CREATE TABLE.
pub fn column_definitions(schema: &str) -> String {
    COLUMNS.iter().map(|c| format!("{} {}", c.name, c.ty(schema))).collect::<Vec<_>>().join(",\n  ")
}

/// `value, value, …` of one row, in column order.
pub fn row_values(special: bool) -> String {
    COLUMNS.iter().map(|c| c.value(special)).collect::<Vec<_>>().join(", ")
}
