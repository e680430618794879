//! The shared services' addresses: what `eval "$(scripts/infra env)"` exports, or the
//! defaults `scripts/infra` starts them on.

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

pub fn kafka_bootstrap() -> String {
    var("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
}

pub fn registry_url() -> String {
    var(
        "SCHEMA_REGISTRY_URL",
        "http://127.0.0.1:8081/apis/ccompat/v7",
    )
}

pub fn postgres_url() -> String {
    var(
        "POSTGRES_URL",
        "postgres://platform:platform@127.0.0.1:5432/platform",
    )
}

pub fn redis_url() -> String {
    var("REDIS_URL", "redis://127.0.0.1:6379")
}

pub fn mysql_url() -> String {
    var(
        "MYSQL_URL",
        "mysql://platform:platform@127.0.0.1:3306/platform",
    )
}

/// `url` with its database (the last path segment) replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(server, _)| server);
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/platform", "t_1"),
            "postgres://u:p@127.0.0.1:5432/t_1"
        );
        assert_eq!(
            with_database("mysql://u:p@h:3306/platform?ssl-mode=disabled", "x"),
            "mysql://u:p@h:3306/x?ssl-mode=disabled"
        );
    }
}
