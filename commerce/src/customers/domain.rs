//! Customers and the rules a customer body must satisfy.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::http::bounded_text;

pub const MAX_NAME_LEN: usize = 200;
pub const MAX_EMAIL_LEN: usize = 254;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Tier {
    Gold,
    Silver,
    Bronze,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Gold => "Gold",
            Tier::Silver => "Silver",
            Tier::Bronze => "Bronze",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        [Tier::Gold, Tier::Silver, Tier::Bronze]
            .into_iter()
            .find(|t| t.as_str() == text)
            .ok_or_else(|| format!("tier must be Gold, Silver or Bronze, not {text:?}"))
    }
}

/// An email address as far as a shop needs to check one: something@domain.tld.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = bounded_text("email", text, MAX_EMAIL_LEN)?;
        let valid = text.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.split('.').count() >= 2
                && domain.split('.').all(|part| !part.is_empty())
                && !text.chars().any(char::is_whitespace)
        });
        if valid {
            Ok(Email(text))
        } else {
            Err(format!(
                "email must look like name@example.com, not {text:?}"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    pub id: i64,
    pub name: String,
    pub email: Email,
    pub tier: Tier,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomerBody {
    pub name: String,
    pub email: String,
    pub tier: String,
}

/// A validated customer body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerDetails {
    pub name: String,
    pub email: Email,
    pub tier: Tier,
}

impl CustomerBody {
    pub fn validate(self) -> Result<CustomerDetails, String> {
        Ok(CustomerDetails {
            name: bounded_text("name", &self.name, MAX_NAME_LEN)?,
            email: Email::parse(&self.email)?,
            tier: self.tier.parse()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_need_a_local_part_and_a_dotted_domain() {
        assert!(Email::parse("ann@example.com").is_ok());
        for bad in [
            "ann",
            "@example.com",
            "ann@example",
            "ann@@example.com",
            "a n@x.io",
            "ann@x..io",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }
}
