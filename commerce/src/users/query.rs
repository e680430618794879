//! `POST /users/query`: a state query over the users read model, in the style of a state
//! store's query API.
//!
//! ```json
//! { "filter": { "AND": [ { "EQ": { "address.city": "Gouda" } },
//!                        { "IN": { "userType": ["CUSTOMER", "ADMIN"] } } ] },
//!   "sort": [ { "key": "lastName" }, { "key": "geolocation.latitude", "order": "DESC" } ],
//!   "page": { "limit": 50, "token": "..." } }
//! ```
//!
//! - `filter`: one of `EQ` (one field → a value), `IN` (one field → a non-empty array), `AND`
//!   and `OR` (a non-empty array of filters), nested at most [`MAX_DEPTH`] deep; fields by
//!   their JSON names, nested ones by dot path (see [`FIELDS`]). Deleted users never match.
//! - `sort`: keys with `order` `ASC` (default) or `DESC`; the user id always ends the order,
//!   so it is total.
//! - `page`: `limit` from 1 to [`MAX_LIMIT`] (default [`DEFAULT_LIMIT`]); `token` from the
//!   previous answer. The answer holds `results` and, while more remain, `token`.
//!
//! Paging is keyset paging: the token holds the sort values of the page's last user, and the
//! next page starts strictly after them in the total order. Users inserted or changed while a
//! client pages do not shift the pages: nothing that stays is missed or repeated. The token
//! also holds a fingerprint of the filter and sort, so it is refused with another query.
//!
//! Text compares by its bytes (UTF-8, so by code point), numbers as doubles; a missing
//! `deliveryAgentStatus` compares as the empty text. Every problem with a query is a 400
//! naming it.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sqlx::mysql::MySqlPool;
use sqlx::{MySql, QueryBuilder};

use crate::http::ApiError;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;
pub const MAX_DEPTH: usize = 8;
/// Filters in one query (every EQ, IN, AND, OR counts), and values of one IN.
pub const MAX_TERMS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Number,
}

/// A queryable field: its name in queries and its path in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
}

pub const FIELDS: &[Field] = &[
    Field {
        name: "id",
        kind: Kind::Text,
    },
    Field {
        name: "email",
        kind: Kind::Text,
    },
    Field {
        name: "username",
        kind: Kind::Text,
    },
    Field {
        name: "firstName",
        kind: Kind::Text,
    },
    Field {
        name: "lastName",
        kind: Kind::Text,
    },
    Field {
        name: "address.street",
        kind: Kind::Text,
    },
    Field {
        name: "address.city",
        kind: Kind::Text,
    },
    Field {
        name: "address.state",
        kind: Kind::Text,
    },
    Field {
        name: "address.zipCode",
        kind: Kind::Text,
    },
    Field {
        name: "address.country",
        kind: Kind::Text,
    },
    Field {
        name: "geolocation.latitude",
        kind: Kind::Number,
    },
    Field {
        name: "geolocation.longitude",
        kind: Kind::Number,
    },
    Field {
        name: "phoneNumber",
        kind: Kind::Text,
    },
    Field {
        name: "userType",
        kind: Kind::Text,
    },
    Field {
        name: "deliveryAgentStatus",
        kind: Kind::Text,
    },
    Field {
        name: "createdAt",
        kind: Kind::Text,
    },
    Field {
        name: "updatedAt",
        kind: Kind::Text,
    },
];

const ID: Field = FIELDS[0];

fn field(name: &str) -> Result<Field, String> {
    FIELDS
        .iter()
        .copied()
        .find(|f| f.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
            format!("unknown field {name:?}; fields are {}", names.join(", "))
        })
}

/// A value a field is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Text(String),
    Number(f64),
}

impl Scalar {
    fn parse(field: Field, value: &Value) -> Result<Self, String> {
        match (field.kind, value) {
            (Kind::Text, Value::String(text)) => Ok(Scalar::Text(text.clone())),
            (Kind::Number, Value::Number(n)) => n
                .as_f64()
                .map(Scalar::Number)
                .ok_or_else(|| format!("{} takes a number, not {n}", field.name)),
            (Kind::Text, other) => Err(format!("{} takes text, not {other}", field.name)),
            (Kind::Number, other) => Err(format!("{} takes a number, not {other}", field.name)),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Scalar::Text(text) => json!(text),
            Scalar::Number(n) => json!(n),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Eq(Field, Scalar),
    In(Field, Vec<Scalar>),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

impl Filter {
    pub fn parse(value: &Value) -> Result<Self, String> {
        let mut terms = 0;
        Self::parse_at(value, 1, &mut terms)
    }

    fn parse_at(value: &Value, depth: usize, terms: &mut usize) -> Result<Self, String> {
        if depth > MAX_DEPTH {
            return Err(format!("filter is nested deeper than {MAX_DEPTH} levels"));
        }
        *terms += 1;
        if *terms > MAX_TERMS {
            return Err(format!("filter has more than {MAX_TERMS} terms"));
        }
        let (op, operand) = single_entry(value, "a filter", "EQ, IN, AND or OR")?;
        match op.as_str() {
            "EQ" => {
                let (name, value) = single_entry(operand, "EQ", "a field")?;
                let field = field(name)?;
                Ok(Filter::Eq(field, Scalar::parse(field, value)?))
            }
            "IN" => {
                let (name, values) = single_entry(operand, "IN", "a field")?;
                let field = field(name)?;
                let Value::Array(values) = values else {
                    return Err(format!("IN {name} takes an array of values, not {values}"));
                };
                if values.is_empty() || values.len() > MAX_TERMS {
                    return Err(format!(
                        "IN {name} takes from 1 to {MAX_TERMS} values, not {}",
                        values.len()
                    ));
                }
                let values = values
                    .iter()
                    .map(|v| Scalar::parse(field, v))
                    .collect::<Result<_, _>>()?;
                Ok(Filter::In(field, values))
            }
            "AND" | "OR" => {
                let Value::Array(filters) = operand else {
                    return Err(format!("{op} takes an array of filters, not {operand}"));
                };
                if filters.is_empty() {
                    return Err(format!("{op} takes at least one filter"));
                }
                let filters = filters
                    .iter()
                    .map(|f| Self::parse_at(f, depth + 1, terms))
                    .collect::<Result<_, _>>()?;
                Ok(if op == "AND" {
                    Filter::And(filters)
                } else {
                    Filter::Or(filters)
                })
            }
            other => Err(format!(
                "unknown filter operator {other:?}; operators are EQ, IN, AND, OR"
            )),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Filter::Eq(f, v) => json!({ "EQ": { f.name: v.to_json() } }),
            Filter::In(f, vs) => {
                json!({ "IN": { f.name: vs.iter().map(Scalar::to_json).collect::<Vec<_>>() } })
            }
            Filter::And(fs) => json!({ "AND": fs.iter().map(Filter::to_json).collect::<Vec<_>>() }),
            Filter::Or(fs) => json!({ "OR": fs.iter().map(Filter::to_json).collect::<Vec<_>>() }),
        }
    }
}

fn single_entry<'v>(
    value: &'v Value,
    what: &str,
    expected: &str,
) -> Result<(&'v String, &'v Value), String> {
    match value {
        Value::Object(map) if map.len() == 1 => Ok(map.iter().next().expect("one entry")),
        other => Err(format!(
            "{what} must be an object with exactly one key ({expected}), not {other}"
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SortBody {
    pub key: String,
    #[serde(default)]
    pub order: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageBody {
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub token: Option<String>,
}

/// `POST /users/query`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    #[serde(default)]
    pub filter: Option<Value>,
    #[serde(default)]
    pub sort: Vec<SortBody>,
    #[serde(default)]
    pub page: Option<PageBody>,
}

/// A validated query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub filter: Option<Filter>,
    /// Ends with the id (added when the client did not sort by it).
    pub sort: Vec<(Field, Order)>,
    pub limit: i64,
    /// The sort values of the previous page's last user.
    pub after: Option<Vec<Scalar>>,
}

impl QueryBody {
    pub fn validate(self) -> Result<Query, String> {
        let filter = self.filter.as_ref().map(Filter::parse).transpose()?;
        let mut sort = Vec::new();
        for key in &self.sort {
            let field = field(&key.key)?;
            let order = match key.order.as_deref() {
                None | Some("ASC") => Order::Asc,
                Some("DESC") => Order::Desc,
                Some(other) => {
                    return Err(format!("sort order must be ASC or DESC, not {other:?}"))
                }
            };
            if sort.iter().any(|(f, _)| *f == field) {
                return Err(format!("sort names {} twice", field.name));
            }
            sort.push((field, order));
        }
        if !sort.iter().any(|(f, _)| *f == ID) {
            sort.push((ID, Order::Asc));
        }
        let page = self.page.unwrap_or(PageBody {
            limit: None,
            token: None,
        });
        let limit = page.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(format!(
                "page.limit must be from 1 to {MAX_LIMIT}, not {limit}"
            ));
        }
        let mut query = Query {
            filter,
            sort,
            limit,
            after: None,
        };
        if let Some(token) = page.token {
            query.after = Some(query.read_token(&token)?);
        }
        Ok(query)
    }
}

impl Query {
    /// Identifies the filter and sort, so a token is only used with the query that made it.
    fn fingerprint(&self) -> String {
        let shape = json!({
            "filter": self.filter.as_ref().map(Filter::to_json),
            "sort": self.sort.iter().map(|(f, o)| json!([f.name, *o == Order::Desc])).collect::<Vec<_>>(),
        });
        format!("{:016x}", fnv1a(shape.to_string().as_bytes()))
    }

    fn token_for(&self, last: &Value) -> Result<String, ApiError> {
        let values = self
            .sort
            .iter()
            .map(|(field, _)| sort_value(*field, last).map(|v| v.to_json()))
            .collect::<Result<Vec<_>, _>>()?;
        let token = json!({ "q": self.fingerprint(), "after": values });
        Ok(hex(token.to_string().as_bytes()))
    }

    fn read_token(&self, token: &str) -> Result<Vec<Scalar>, String> {
        let invalid = || "page.token is not a token this query handed out".to_owned();
        let bytes = unhex(token).ok_or_else(invalid)?;
        let token: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        if token["q"].as_str() != Some(self.fingerprint().as_str()) {
            return Err(
                "page.token belongs to another query (its filter or sort differ)".to_owned(),
            );
        }
        let values = token["after"].as_array().ok_or_else(invalid)?;
        if values.len() != self.sort.len() {
            return Err(invalid());
        }
        self.sort
            .iter()
            .zip(values)
            .map(|((field, _), value)| Scalar::parse(*field, value).map_err(|_| invalid()))
            .collect()
    }
}

/// A document's value of a sort field, as the SQL expressions compare it.
fn sort_value(field: Field, document: &Value) -> Result<Scalar, ApiError> {
    let value = field
        .name
        .split('.')
        .fold(document, |value, part| &value[part]);
    match (field.kind, value) {
        (Kind::Text, Value::Null) => Ok(Scalar::Text(String::new())),
        (Kind::Text, Value::String(text)) => Ok(Scalar::Text(text.clone())),
        (Kind::Number, Value::Number(n)) if n.as_f64().is_some() => {
            Ok(Scalar::Number(n.as_f64().unwrap_or_default()))
        }
        _ => Err(ApiError::Unavailable(format!(
            "read model document without a usable {}",
            field.name
        ))),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 64 * 1024 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The SQL expression of a field's value in `document`, as it is compared and sorted.
fn expression(field: Field) -> String {
    // Field names are the catalogue's constants, never client text.
    let path = format!("$.{}", field.name);
    match field.kind {
        Kind::Text => format!("CAST(COALESCE(JSON_VALUE(document, '{path}'), '') AS BINARY)"),
        Kind::Number => format!("CAST(JSON_VALUE(document, '{path}') AS DOUBLE)"),
    }
}

fn push_scalar(query: &mut QueryBuilder<'_, MySql>, value: &Scalar) {
    match value {
        Scalar::Text(text) => {
            query.push("CAST(");
            query.push_bind(text.clone());
            query.push(" AS BINARY)");
        }
        Scalar::Number(n) => {
            query.push_bind(*n);
        }
    }
}

fn push_filter(query: &mut QueryBuilder<'_, MySql>, filter: &Filter) {
    match filter {
        Filter::Eq(field, value) => {
            query.push(expression(*field)).push(" = ");
            push_scalar(query, value);
        }
        Filter::In(field, values) => {
            query.push(expression(*field)).push(" IN (");
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    query.push(", ");
                }
                push_scalar(query, value);
            }
            query.push(")");
        }
        Filter::And(filters) | Filter::Or(filters) => {
            let joiner = if matches!(filter, Filter::And(_)) {
                " AND "
            } else {
                " OR "
            };
            query.push("(");
            for (i, inner) in filters.iter().enumerate() {
                if i > 0 {
                    query.push(joiner);
                }
                push_filter(query, inner);
            }
            query.push(")");
        }
    }
}

/// `(k1 > v1) OR (k1 = v1 AND k2 > v2) OR ...`, with `<` for descending keys.
fn push_after(query: &mut QueryBuilder<'_, MySql>, sort: &[(Field, Order)], after: &[Scalar]) {
    query.push("(");
    for i in 0..sort.len() {
        if i > 0 {
            query.push(" OR ");
        }
        query.push("(");
        for j in 0..i {
            query.push(expression(sort[j].0)).push(" = ");
            push_scalar(query, &after[j]);
            query.push(" AND ");
        }
        let (field, order) = sort[i];
        query
            .push(expression(field))
            .push(if order == Order::Asc { " > " } else { " < " });
        push_scalar(query, &after[i]);
        query.push(")");
    }
    query.push(")");
}

/// One page of the answer.
pub async fn run(pool: &MySqlPool, documents: &str, query: &Query) -> Result<Value, ApiError> {
    let mut sql = QueryBuilder::<MySql>::new(format!(
        "SELECT document FROM {documents} WHERE JSON_VALUE(document, '$.isActive') IN ('1', 'true')"
    ));
    if let Some(filter) = &query.filter {
        sql.push(" AND ");
        push_filter(&mut sql, filter);
    }
    if let Some(after) = &query.after {
        sql.push(" AND ");
        push_after(&mut sql, &query.sort, after);
    }
    sql.push(" ORDER BY ");
    for (i, (field, order)) in query.sort.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.push(expression(*field)).push(if *order == Order::Asc {
            " ASC"
        } else {
            " DESC"
        });
    }
    sql.push(" LIMIT ").push_bind(query.limit + 1);
    let rows: Result<Vec<sqlx::types::Json<Value>>, sqlx::Error> =
        sql.build_query_scalar().fetch_all(pool).await;
    let mut results: Vec<Value> = match rows {
        Ok(rows) => rows.into_iter().map(|d| d.0).collect(),
        // The read model has not written its first user yet.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42S02") => Vec::new(),
        Err(e) => {
            tracing::error!(error = %e, "users read model query failed");
            return Err(ApiError::Unavailable(
                "the users read model did not answer; try again".to_owned(),
            ));
        }
    };
    let more = results.len() as i64 > query.limit;
    results.truncate(query.limit as usize);
    let mut answer = Map::new();
    if more {
        let last = results.last().expect("a full page has a last user");
        answer.insert("token".to_owned(), json!(query.token_for(last)?));
    }
    answer.insert("results".to_owned(), Value::Array(results));
    Ok(Value::Object(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(body: Value) -> Result<Query, String> {
        serde_json::from_value::<QueryBody>(body)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn invalid_queries_name_their_problem() {
        for (body, problem) in [
            (
                json!({"filter": {"LIKE": {"email": "a"}}}),
                "unknown filter operator \"LIKE\"",
            ),
            (
                json!({"filter": {"EQ": {"shoeSize": 42}}}),
                "unknown field \"shoeSize\"",
            ),
            (
                json!({"filter": {"EQ": {"address.city": 7}}}),
                "address.city takes text",
            ),
            (
                json!({"filter": {"IN": {"userType": []}}}),
                "IN userType takes from 1",
            ),
            (
                json!({"filter": {"AND": []}}),
                "AND takes at least one filter",
            ),
            (
                json!({"filter": {"EQ": {"a": 1, "b": 2}}}),
                "EQ must be an object with exactly one key",
            ),
            (
                json!({"sort": [{"key": "email", "order": "UP"}]}),
                "sort order must be ASC or DESC",
            ),
            (json!({"page": {"limit": 0}}), "page.limit must be from 1"),
            (
                json!({"page": {"token": "zz"}}),
                "page.token is not a token",
            ),
        ] {
            let error = query(body.clone()).unwrap_err();
            assert!(error.contains(problem), "{body}: {error}");
        }
    }

    #[test]
    fn the_id_ends_every_order_and_tokens_stay_with_their_query() {
        let q = query(json!({"sort": [{"key": "lastName", "order": "DESC"}]})).unwrap();
        assert_eq!(
            q.sort,
            vec![(field("lastName").unwrap(), Order::Desc), (ID, Order::Asc)]
        );
        let last = json!({"lastName": "Smit", "id": "x"});
        let token = q.token_for(&last).unwrap();
        let next = query(
            json!({"sort": [{"key": "lastName", "order": "DESC"}], "page": {"token": token}}),
        )
        .unwrap();
        assert_eq!(
            next.after,
            Some(vec![
                Scalar::Text("Smit".to_owned()),
                Scalar::Text("x".to_owned())
            ])
        );
        let other = query(json!({"sort": [{"key": "lastName"}], "page": {"token": token}}));
        assert!(other.unwrap_err().contains("another query"));
    }
}
