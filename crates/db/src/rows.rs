//! Query results as typed values, independent of how the shell renders them.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use tokio_postgres::types::Type;

/// One cell. Types survive to the JSON output: numbers stay numbers, NULL stays null.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
    Time(DateTime<Utc>),
    List(Vec<String>),
    Json(serde_json::Value),
}

/// A result set with its column names (the headers the shell prints).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl Rows {
    pub fn from_pg(rows: &[Row]) -> Rows {
        let columns = rows
            .first()
            .map(|r| r.columns().iter().map(|c| c.name().to_string()).collect())
            .unwrap_or_default();
        Rows {
            columns,
            rows: rows.iter().map(row_values).collect(),
        }
    }

    /// Like [`Rows::from_pg`], but keeps the column names of a statement that returned no row.
    pub fn from_pg_with_columns(columns: Vec<String>, rows: &[Row]) -> Rows {
        Rows {
            columns,
            rows: rows.iter().map(row_values).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The value of `column` in row `i`.
    pub fn get(&self, i: usize, column: &str) -> Option<&Value> {
        let c = self.columns.iter().position(|n| n == column)?;
        self.rows.get(i)?.get(c)
    }
}

fn row_values(row: &Row) -> Vec<Value> {
    (0..row.len()).map(|i| cell(row, i)).collect()
}

fn cell(row: &Row, i: usize) -> Value {
    let ty = row.columns()[i].type_().clone();
    let v = match ty {
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map(|v| v.map(|v| Value::Int(v.into()))),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)
            .map(|v| v.map(|v| Value::Int(v.into()))),
        Type::INT8 => row.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int)),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)
            .map(|v| v.map(|v| Value::Float(v.into()))),
        Type::FLOAT8 => row
            .try_get::<_, Option<f64>>(i)
            .map(|v| v.map(Value::Float)),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .map(|v| v.map(Value::Bool)),
        Type::TIMESTAMPTZ => row
            .try_get::<_, Option<DateTime<Utc>>>(i)
            .map(|v| v.map(Value::Time)),
        Type::TEXT_ARRAY | Type::NAME_ARRAY | Type::VARCHAR_ARRAY => row
            .try_get::<_, Option<Vec<String>>>(i)
            .map(|v| v.map(Value::List)),
        Type::JSON | Type::JSONB => row
            .try_get::<_, Option<serde_json::Value>>(i)
            .map(|v| v.map(Value::Json)),
        _ => row
            .try_get::<_, Option<String>>(i)
            .map(|v| v.map(Value::Text)),
    };
    match v {
        Ok(Some(v)) => v,
        Ok(None) => Value::Null,
        // A view column of a type we do not decode: say so instead of failing the whole listing.
        Err(_) => Value::Text(format!("<{} not shown>", ty.name())),
    }
}
