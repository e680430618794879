//! HTTP clients of the services the order flow calls (commerce's customers, products and
//! orders, and the payment provider), each call under its service's [`Resilient`] policy.
//! A 4xx comes back as an answer for the caller to interpret; 5xx, timeouts and connection
//! errors are retried, then returned as a retryable [`CallError`].

use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::configuration::Settings;
use crate::error::{Error, Result};
use crate::resilience::{Call, CallError, Resilient};

/// One service's base URL, policy and connection pool.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    base: String,
    resilient: Resilient,
}

/// A non-5xx answer: status and JSON body (`null` when empty).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Http {
    pub fn new(base: &str, resilient: Resilient) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            resilient,
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, CallError> {
        let call = self.resilient.policy().name;
        let url = format!("{}{path}", self.base);
        self.resilient
            .call(|| async {
                let mut request = self.client.request(method.clone(), &url);
                if let Some(body) = body {
                    request = request.json(body);
                }
                if let Some(key) = idempotency_key {
                    request = request.header("idempotency-key", key);
                }
                let response = request
                    .send()
                    .await
                    .map_err(|source| CallError::Transport { call, source })?;
                let status = response.status().as_u16();
                let text = response
                    .text()
                    .await
                    .map_err(|source| CallError::Transport { call, source })?;
                if status >= 500 || status == 429 {
                    return Err(CallError::Status {
                        call,
                        status,
                        body: text,
                    });
                }
                let body = if text.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&text).unwrap_or(Value::String(text))
                };
                Ok(Answer { status, body })
            })
            .await
    }
}

fn unexpected(call: &str, answer: &Answer) -> Error {
    Error::Permanent(format!(
        "{call} answered {}: {}",
        answer.status, answer.body
    ))
}

/// What the saga needs of a customer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    pub name: String,
    pub email: String,
    pub tier: String,
}

/// What the saga needs of a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductInfo {
    pub price_cents: i64,
    pub stock: i64,
}

/// The payment provider's answer to a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    Approved,
    Declined(String),
}

/// Every service the order flow calls.
#[derive(Clone)]
pub struct Clients {
    pub customers: Http,
    pub products: Http,
    pub orders: Http,
    pub payments: Http,
}

impl Clients {
    pub fn new(settings: &Settings) -> Self {
        let http = |url: &str, call| Http::new(url, Resilient::new(settings.policy(call)));
        Self {
            customers: http(&settings.customers_url, Call::Customers),
            products: http(&settings.products_url, Call::Products),
            orders: http(&settings.orders_url, Call::Orders),
            payments: http(&settings.payments_url, Call::Payments),
        }
    }

    /// `None` for an unknown customer.
    pub async fn profile(&self, customer_id: i64) -> Result<Option<Profile>> {
        let answer = self
            .customers
            .send(
                Method::GET,
                &format!("/customers/{customer_id}"),
                None,
                None,
            )
            .await?;
        match answer.status {
            200 => Ok(Some(serde_json::from_value(answer.body).map_err(|e| {
                Error::Permanent(format!("customer {customer_id}: {e}"))
            })?)),
            404 => Ok(None),
            _ => Err(unexpected("customers", &answer)),
        }
    }

    /// `None` for an unknown product.
    pub async fn product(&self, product_id: i64) -> Result<Option<ProductInfo>> {
        let answer = self
            .products
            .send(Method::GET, &format!("/products/{product_id}"), None, None)
            .await?;
        match answer.status {
            200 => {
                let price = answer.body["price"].as_f64();
                let stock = answer.body["stock"].as_i64();
                match (price, stock) {
                    (Some(price), Some(stock)) => Ok(Some(ProductInfo {
                        price_cents: (price * 100.0).round() as i64,
                        stock,
                    })),
                    _ => Err(unexpected("products", &answer)),
                }
            }
            404 => Ok(None),
            _ => Err(unexpected("products", &answer)),
        }
    }

    /// Releases whatever the order holds (idempotent at the products service).
    pub async fn release(&self, order_id: Uuid) -> Result<()> {
        let answer = self
            .products
            .send(
                Method::POST,
                &format!("/reservations/{order_id}/release"),
                None,
                None,
            )
            .await?;
        match answer.status {
            200 => Ok(()),
            _ => Err(unexpected("products", &answer)),
        }
    }

    /// Adds `quantity` to the product's stock once per `restock_id`.
    pub async fn restock(&self, product_id: i64, restock_id: Uuid, quantity: i32) -> Result<()> {
        let answer = self
            .products
            .send(
                Method::POST,
                &format!("/products/{product_id}/restock"),
                Some(&json!({ "restockId": restock_id, "quantity": quantity })),
                None,
            )
            .await?;
        match answer.status {
            200 | 201 => Ok(()),
            _ => Err(unexpected("products", &answer)),
        }
    }

    /// The order's status, `None` for an unknown order.
    pub async fn order_status(&self, order_id: Uuid) -> Result<Option<String>> {
        let answer = self
            .orders
            .send(Method::GET, &format!("/orders/{order_id}"), None, None)
            .await?;
        match answer.status {
            200 => answer.body["status"]
                .as_str()
                .map(|s| Some(s.to_owned()))
                .ok_or_else(|| unexpected("orders", &answer)),
            404 => Ok(None),
            _ => Err(unexpected("orders", &answer)),
        }
    }

    /// Cancels the order (which releases its stock); done when it is cancelled or failed,
    /// whoever did it, or unknown.
    pub async fn cancel(&self, order_id: Uuid) -> Result<()> {
        let answer = self
            .orders
            .send(
                Method::PUT,
                &format!("/orders/{order_id}/status"),
                Some(&json!({ "status": "Cancelled" })),
                None,
            )
            .await?;
        match answer.status {
            200 | 404 => Ok(()),
            409 => match self.order_status(order_id).await? {
                Some(status) if status == "Cancelled" || status == "Failed" => Ok(()),
                None => Ok(()),
                Some(status) => Err(Error::Permanent(format!(
                    "order {order_id} cannot be cancelled from {status}"
                ))),
            },
            _ => Err(unexpected("orders", &answer)),
        }
    }

    /// Charges the order once per idempotency key (the order id).
    pub async fn charge(&self, order_id: Uuid, amount_cents: i64) -> Result<Charge> {
        let key = order_id.to_string();
        let answer = self
            .payments
            .send(
                Method::POST,
                "/charges",
                Some(&json!({ "orderId": order_id, "amountCents": amount_cents })),
                Some(&key),
            )
            .await?;
        match (answer.status, answer.body["outcome"].as_str()) {
            (200 | 201, Some("approved")) => Ok(Charge::Approved),
            (200 | 201, Some("declined")) => Ok(Charge::Declined(
                answer.body["reason"]
                    .as_str()
                    .unwrap_or("declined")
                    .to_owned(),
            )),
            _ => Err(unexpected("payments", &answer)),
        }
    }
}
