//! `POST /users/query` against an oracle: the same filters and sorts evaluated in Rust over
//! the users the API created, paged through with tokens (also while users are inserted).

use std::cmp::Ordering;
use std::collections::HashSet;
use std::time::Duration;

use commerce::Service;
use futures::stream::{self, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, Client, Running};
use crate::people::{drop_people, people_settings, user_body, Connector};
use crate::users::apply_catalogue;

const USERS: usize = 1000;
const CITIES: &[&str] = &[
    "Gouda",
    "Delft",
    "Zürich",
    "'s-Hertogenbosch",
    "delft",
    "Ålesund",
];
const LAST_NAMES: &[&str] = &[
    "Smit",
    "de Vries",
    "Jansen",
    "Bakker",
    "Visser",
    "Østergaard",
    "smit",
];
const FIRST_NAMES: &[&str] = &["Ann", "Zoë", "Bram", "Eva"];
const COUNTRIES: &[&str] = &["NL", "CH", "NO"];
const TYPES: &[&str] = &["CUSTOMER", "ADMIN", "DELIVERY_AGENT"];

/// The `i`-th user: fields cycle with co-prime periods, so combinations repeat rarely and
/// ties on every sort key happen (the id decides them).
fn varied_user(run: &str, i: usize) -> Value {
    let mut body = user_body(i, TYPES[i % 3]);
    body["email"] = json!(format!("{run}.{i}@example.com"));
    body["username"] = json!(format!("{run}-{i}"));
    body["firstName"] = json!(FIRST_NAMES[i % 4]);
    body["lastName"] = json!(LAST_NAMES[i % 7]);
    body["address"]["city"] = json!(CITIES[i % 6]);
    body["address"]["country"] = json!(COUNTRIES[i % 3]);
    body["address"]["zipCode"] = json!(format!("{:04}", i % 11));
    body["geolocation"]["latitude"] = json!(((i * 37) % 180) as f64 - 90.0 + 0.125);
    body["geolocation"]["longitude"] = json!(((i * 53) % 361) as f64 - 180.0);
    body
}

/// A filter, sort keys with their orders, and a page size.
type Case = (Option<Value>, Vec<(&'static str, &'static str)>, usize);

/// A document's value of a field as the query compares it: text (missing: empty) or number.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Key {
    Text(String),
    Number(f64),
}

fn key(user: &Value, field: &str) -> Key {
    let value = field.split('.').fold(user, |v, part| &v[part]);
    match value {
        Value::Number(n) => Key::Number(n.as_f64().unwrap()),
        Value::String(s) => Key::Text(s.clone()),
        Value::Null => Key::Text(String::new()),
        other => panic!("{field}: {other}"),
    }
}

fn matches(user: &Value, filter: &Value) -> bool {
    let (op, operand) = filter.as_object().unwrap().iter().next().unwrap();
    match op.as_str() {
        "EQ" => {
            let (field, value) = operand.as_object().unwrap().iter().next().unwrap();
            key(user, field) == key(&json!({ "v": value }), "v")
        }
        "IN" => {
            let (field, values) = operand.as_object().unwrap().iter().next().unwrap();
            values
                .as_array()
                .unwrap()
                .iter()
                .any(|v| key(user, field) == key(&json!({ "v": v }), "v"))
        }
        "AND" => operand.as_array().unwrap().iter().all(|f| matches(user, f)),
        "OR" => operand.as_array().unwrap().iter().any(|f| matches(user, f)),
        other => panic!("{other}"),
    }
}

/// The oracle: active users matching `filter`, in `sort` order, then by id.
fn expected(users: &[Value], filter: Option<&Value>, sort: &[(&str, &str)]) -> Vec<String> {
    let mut found: Vec<&Value> = users
        .iter()
        .filter(|u| u["isActive"] == true)
        .filter(|u| filter.is_none_or(|f| matches(u, f)))
        .collect();
    found.sort_by(|a, b| {
        sort.iter()
            .chain(std::iter::once(&("id", "ASC")))
            .map(|(field, order)| {
                let ordering = key(a, field).partial_cmp(&key(b, field)).unwrap();
                if *order == "DESC" {
                    ordering.reverse()
                } else {
                    ordering
                }
            })
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Equal)
    });
    found
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every page of a query, following tokens; each page is checked to be at most `limit`.
async fn page_through(
    client: &Client,
    url: &str,
    filter: Option<&Value>,
    sort: &[(&str, &str)],
    limit: usize,
    mut between_pages: impl FnMut(usize),
) -> Vec<String> {
    let sort: Vec<Value> = sort
        .iter()
        .map(|(key, order)| json!({ "key": key, "order": order }))
        .collect();
    let mut token: Option<String> = None;
    let mut ids = Vec::new();
    for page in 0..=USERS * 2 {
        let mut body = json!({ "sort": sort, "page": { "limit": limit } });
        if let Some(filter) = filter {
            body["filter"] = filter.clone();
        }
        if let Some(token) = &token {
            body["page"]["token"] = json!(token);
        }
        let (status, answer) = client.post(url, &body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let results = answer["results"].as_array().unwrap();
        assert!(results.len() <= limit);
        ids.extend(results.iter().map(|u| u["id"].as_str().unwrap().to_owned()));
        match answer["token"].as_str() {
            Some(next) => {
                assert_eq!(results.len(), limit, "a page before the last is full");
                token = Some(next.to_owned());
            }
            None => return ids,
        }
        between_pages(page);
    }
    panic!("paging did not end");
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_filter_sort_and_page_like_the_oracle() {
    let _shared = crate::helpers::shared_delivery_topics().await;
    let settings = people_settings();
    apply_catalogue(&settings.kafka).await;
    let users = Running::start(&settings, Service::Users).await;
    let connector = Connector::start(&settings).await;
    let client = Client::default();
    let url = format!("{}/users", users.address);
    let query = format!("{url}/query");
    let run = testkit::unique("q");

    let mut created: Vec<Value> = stream::iter(0..USERS)
        .map(|i| {
            let (client, url, body) = (client.clone(), url.clone(), varied_user(&run, i));
            async move {
                let (status, user) = client.post(&url, &body).await;
                assert_eq!(status, StatusCode::CREATED, "{user}");
                user
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    // Some are deleted: queries must skip them.
    for user in created.iter_mut().step_by(50) {
        let id = user["id"].as_str().unwrap().to_owned();
        let (status, deleted) = client
            .send_raw(Method::DELETE, &format!("{url}/{id}"), "")
            .await;
        assert_eq!(status, StatusCode::OK, "{deleted}");
        *user = deleted;
    }
    let active = created.iter().filter(|u| u["isActive"] == true).count();
    assert_eq!(active, USERS - USERS / 50);
    testkit::eventually(
        "the read model has every active user, and no deleted one",
        Duration::from_secs(120),
        || {
            let (client, query) = (client.clone(), query.clone());
            async move {
                let (status, answer) = client.post(&query, &json!({"page": {"limit": 1000}})).await;
                status == StatusCode::OK
                    && answer["results"].as_array().map(Vec::len) == Some(active)
            }
        },
    )
    .await;

    let cases: Vec<Case> = vec![
        (
            Some(json!({"EQ": {"address.city": "Gouda"}})),
            vec![("lastName", "ASC")],
            7,
        ),
        (
            Some(json!({"AND": [
                {"IN": {"userType": ["CUSTOMER", "ADMIN"]}},
                {"OR": [{"EQ": {"address.country": "NL"}}, {"EQ": {"firstName": "Zoë"}}]}
            ]})),
            vec![("geolocation.latitude", "DESC"), ("lastName", "ASC")],
            13,
        ),
        (
            Some(json!({"IN": {"address.city": ["Zürich", "delft", "Ålesund"]}})),
            vec![
                ("address.city", "DESC"),
                ("firstName", "ASC"),
                ("geolocation.longitude", "ASC"),
            ],
            50,
        ),
        (
            Some(json!({"EQ": {"deliveryAgentStatus": "FREE"}})),
            vec![("createdAt", "DESC")],
            30,
        ),
        (
            Some(json!({"EQ": {"geolocation.latitude": 0.125}})),
            vec![],
            2,
        ),
        (
            None,
            vec![("deliveryAgentStatus", "ASC"), ("address.zipCode", "DESC")],
            100,
        ),
    ];
    for (filter, sort, limit) in &cases {
        let want = expected(&created, filter.as_ref(), sort);
        assert!(!want.is_empty(), "{filter:?} matches something");
        let got = page_through(&client, &query, filter.as_ref(), sort, *limit, |_| {}).await;
        assert_eq!(got.len(), want.len(), "{filter:?} {sort:?}");
        assert!(
            got == want,
            "{filter:?} {sort:?}: pages differ from the oracle"
        );
    }

    // All 1,000 (less the deleted) through pages of 100 while users are inserted: every user
    // there from the start comes exactly once, in order; nothing comes twice.
    let sort = [("address.city", "ASC"), ("lastName", "DESC")];
    let want = expected(&created, None, &sort);
    let (inserts, mut inserted) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let writer = {
        let (client, url, run) = (client.clone(), url.clone(), run.clone());
        tokio::spawn(async move {
            let mut n = USERS;
            while let Some(page) = inserted.recv().await {
                for _ in 0..5 {
                    let mut body = varied_user(&run, n);
                    body["address"]["city"] = json!(CITIES[page % CITIES.len()]);
                    let (status, user) = client.post(&url, &body).await;
                    assert_eq!(status, StatusCode::CREATED, "{user}");
                    n += 1;
                }
            }
            n - USERS
        })
    };
    let got = page_through(&client, &query, None, &sort, 100, |page| {
        inserts.send(page).unwrap();
    })
    .await;
    drop(inserts);
    let added = writer.await.unwrap();
    assert!(added >= 45, "users were inserted while paging");
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no user comes twice");
    let originals: Vec<String> = got.iter().filter(|id| want.contains(id)).cloned().collect();
    assert_eq!(
        originals, want,
        "every user there from the start, once, in order"
    );

    // Bad queries and tokens are 400s that name the problem.
    let (_, first) = client
        .post(
            &query,
            &json!({"sort": [{"key": "lastName"}], "page": {"limit": 1}}),
        )
        .await;
    let token = first["token"].as_str().unwrap();
    for (body, needle) in [
        (
            json!({"sort": [{"key": "email"}], "page": {"token": token}}),
            "belongs to another query",
        ),
        (
            json!({"page": {"token": "not a token"}}),
            "page.token is not a token",
        ),
        (
            json!({"filter": {"EQ": {"address.town": "Gouda"}}}),
            "unknown field \"address.town\"",
        ),
        (
            json!({"filter": {"GT": {"geolocation.latitude": 3}}}),
            "unknown filter operator \"GT\"",
        ),
        (
            json!({"filter": {"IN": {"userType": "ADMIN"}}}),
            "takes an array of values",
        ),
        (
            json!({"sort": [{"key": "lastName", "order": "down"}]}),
            "sort order must be ASC or DESC",
        ),
        (
            json!({"page": {"limit": 1001}}),
            "page.limit must be from 1 to 1000",
        ),
        (json!({"where": {}}), "unknown field `where`"),
    ] {
        assert_error(
            &client.post(&query, &body).await,
            StatusCode::BAD_REQUEST,
            needle,
        );
    }

    connector.stop().await;
    users.stop().await;
    drop_people(&settings).await;
}
