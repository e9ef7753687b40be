//! Rhai expressions over a source row: one engine, compiled once at start, evaluated per row.
//!
//! Columns are bound as variables (only names that are Rhai identifiers), converted from PostgreSQL text by type:
//! int2/int4/int8/oid → integer, float4/float8 → float, numeric → decimal (exact to 28 digits; more is an error
//! naming the column, never a rounded value), bool → bool, NULL → `()`, everything else → string.
//! Results go back to PostgreSQL text: integers and decimals as digits, booleans `t`/`f`, `()` → NULL.
//! The engine has no time, no modules, no eval, no printing, and limits on operations, sizes and depth.

use rhai::{Dynamic, Engine, Scope, AST};
use rust_decimal::Decimal;

/// Upper bound on Rhai operations per evaluation: stops runaway loops.
const MAX_OPERATIONS: u64 = 100_000;

pub fn engine() -> Engine {
    let mut engine = Engine::new();
    engine
        .set_strict_variables(true)
        .set_max_operations(MAX_OPERATIONS)
        .set_max_string_size(10 << 20)
        .set_max_array_size(100_000)
        .set_max_map_size(100_000)
        .set_max_expr_depths(64, 32)
        .disable_symbol("eval")
        .on_print(|_| {})
        .on_debug(|_, _, _| {});
    engine
}

/// A compiled expression and the source columns it reads.
#[derive(Clone, Debug)]
pub struct Expr {
    pub text: String,
    pub ast: AST,
    pub inputs: Vec<String>,
}

/// Whether a column name can be a Rhai variable.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !matches!(name, "true" | "false" | "let" | "const" | "if" | "else" | "fn" | "return" | "in" | "this")
}

/// Compiles `text` with every bindable source column in scope (strict variables: an unknown name is an error
/// with its position). `columns` are (name, type oid).
pub fn compile(engine: &Engine, text: &str, columns: &[(String, u32)]) -> Result<Expr, String> {
    let mut scope = Scope::new();
    for (name, _) in columns.iter().filter(|(name, _)| is_identifier(name)) {
        scope.push_dynamic(name.as_str(), Dynamic::UNIT);
    }
    let ast = engine.compile_expression_with_scope(&scope, text).map_err(|e| e.to_string())?;
    let inputs = identifiers(text).into_iter().filter(|id| columns.iter().any(|(name, _)| name == id)).collect();
    Ok(Expr { text: text.to_owned(), ast, inputs })
}

/// Identifier tokens outside string and character literals, in order, without repeats.
fn identifiers(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' || b == b'\'' || b == b'`' {
            let quote = b;
            i += 1;
            while i < bytes.len() && bytes[i] != quote {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if b.is_ascii_alphabetic() || b == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            // A name right after '.' is a method or property, not a variable.
            let after_dot = text[..start].trim_end().ends_with('.');
            let word = &text[start..i];
            if !after_dot && !out.iter().any(|w| w == word) {
                out.push(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("column {column}: numeric value does not fit Rhai's decimal (28 significant digits); use a declarative conversion or copy it unchanged")]
    DecimalRange { column: String },
    #[error("column {column}: value is not a valid {kind}")]
    Malformed { column: String, kind: &'static str },
}

/// A PostgreSQL text value as a Rhai value, by type OID.
pub fn to_dynamic(column: &str, type_oid: u32, value: Option<&str>) -> Result<Dynamic, ValueError> {
    let Some(text) = value else { return Ok(Dynamic::UNIT) };
    let malformed = |kind| ValueError::Malformed { column: column.to_owned(), kind };
    Ok(match type_oid {
        20 | 21 | 23 | 26 => Dynamic::from_int(text.parse().map_err(|_| malformed("integer"))?),
        700 | 701 => Dynamic::from_float(text.parse().map_err(|_| malformed("float"))?),
        1700 => Dynamic::from_decimal(
            Decimal::from_str_exact(text).map_err(|_| ValueError::DecimalRange { column: column.to_owned() })?,
        ),
        16 => Dynamic::from_bool(text == "t" || text == "true"),
        _ => Dynamic::from(text.to_owned()),
    })
}

/// A Rhai result as PostgreSQL text (`None` = NULL) and the type name it suggests.
pub fn from_dynamic(value: &Dynamic) -> Result<(Option<String>, &'static str), String> {
    if value.is_unit() {
        return Ok((None, "text"));
    }
    if let Ok(i) = value.as_int() {
        return Ok((Some(i.to_string()), "bigint"));
    }
    if let Ok(f) = value.as_float() {
        if !f.is_finite() {
            return Err("expression produced a non-finite float".into());
        }
        return Ok((Some(f.to_string()), "double precision"));
    }
    if let Ok(d) = value.as_decimal() {
        return Ok((Some(d.to_string()), "numeric"));
    }
    if let Ok(b) = value.as_bool() {
        return Ok((Some(if b { "t" } else { "f" }.to_owned()), "boolean"));
    }
    if value.is_string() || value.is_char() {
        return Ok((Some(value.to_string()), "text"));
    }
    Err(format!("expression produced a {}, not a scalar", value.type_name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<(String, u32)> {
        vec![("full_name".into(), 25), ("amount_cents".into(), 20), ("price".into(), 1700), ("Odd Name".into(), 25)]
    }

    #[test]
    fn unknown_column_fails_at_compile_with_position() {
        let err = compile(&engine(), "full_nme + 1", &cols()).unwrap_err();
        assert!(err.contains("full_nme"), "{err}");
    }

    #[test]
    fn inputs_are_the_columns_read() {
        let e = compile(&engine(), r#"full_name.split(" ")[0] + "x" + amount_cents.to_string()"#, &cols()).unwrap();
        assert_eq!(e.inputs, ["full_name", "amount_cents"]);
    }

    #[test]
    fn decimals_are_exact_and_big_numerics_are_refused() {
        let engine = engine();
        let e = compile(&engine, "price / 100", &cols()).unwrap();
        let mut scope = Scope::new();
        scope.push_dynamic("price", to_dynamic("price", 1700, Some("123456789012345678901")).unwrap());
        let out: Dynamic = engine.eval_ast_with_scope(&mut scope, &e.ast).unwrap();
        assert_eq!(from_dynamic(&out).unwrap().0.as_deref(), Some("1234567890123456789.01"));
        assert!(matches!(
            to_dynamic("price", 1700, Some("123456789012345678901234567890.5")),
            Err(ValueError::DecimalRange { .. })
        ));
    }

    #[test]
    fn no_time_no_eval() {
        assert!(
            compile(&engine(), "timestamp()", &cols()).is_err() || {
                let e = compile(&engine(), "timestamp()", &cols()).unwrap();
                engine().eval_ast::<Dynamic>(&e.ast).is_err()
            }
        );
        assert!(compile(&engine(), r#"eval("1")"#, &cols()).is_err());
    }
}
