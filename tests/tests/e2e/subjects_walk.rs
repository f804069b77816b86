//! Reads every stream, bucket and table there is (listed from the servers, not named here)
//! and says where a phone number still appears, in any of the forms given.

use futures::TryStreamExt;
use sqlx::PgPool;

/// Where a number was found: (`stream`, `bucket` or `table`), its name, and the subject, key
/// or row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub store: String,
    pub name: String,
    pub what: String,
}

/// The forms of a number to look for: E.164 and the national forms (found only between
/// non-digits, so a longer number holding them does not count), each also as a bytea column
/// prints it (hex, anywhere), since a webhook body is stored as bytes.
pub struct Forms(Vec<(String, bool)>);

impl Forms {
    pub fn new(forms: &[&str]) -> Self {
        let mut all: Vec<(String, bool)> = forms.iter().map(|f| ((*f).to_owned(), true)).collect();
        all.extend(forms.iter().map(|f| {
            let hex = f.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
            (hex, false)
        }));
        Self(all)
    }

    /// Whether `text` holds one of the forms.
    pub fn in_text(&self, text: &str) -> bool {
        self.0.iter().any(|(form, bounded)| {
            text.match_indices(form.as_str()).any(|(i, _)| {
                let before = text[..i].chars().next_back();
                let after = text[i + form.len()..].chars().next();
                !bounded
                    || (!before.is_some_and(|c| c.is_ascii_digit())
                        && !after.is_some_and(|c| c.is_ascii_digit()))
            })
        })
    }
}

/// Every place `forms` appear: every message of every stream (KV buckets included) and every
/// row of every table of the public schema.
pub async fn walk(js: &async_nats::jetstream::Context, pg: &PgPool, forms: &Forms) -> Vec<Found> {
    let mut found = Vec::new();
    let infos: Vec<_> = js.streams().try_collect().await.expect("list streams");
    assert!(infos.len() >= 10, "every stream is listed: {}", infos.len());
    for info in infos {
        let name = info.config.name.clone();
        if info.state.messages == 0 {
            continue;
        }
        let stream = js.get_stream(&name).await.expect("stream");
        for seq in info.state.first_sequence..=info.state.last_sequence {
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue;
            };
            let headers: String = message
                .headers
                .iter()
                .map(|(k, v)| format!("{k}:{v:?}\n"))
                .collect();
            let text = format!(
                "{}\n{headers}\n{}",
                message.subject,
                String::from_utf8_lossy(&message.payload)
            );
            if forms.in_text(&text) {
                let subject = message.subject.to_string();
                found.push(match name.strip_prefix("KV_") {
                    Some(bucket) => Found {
                        store: "bucket".into(),
                        name: bucket.into(),
                        what: subject
                            .strip_prefix(&format!("$KV.{bucket}."))
                            .unwrap_or(&subject)
                            .to_owned(),
                    },
                    None => Found {
                        store: "stream".into(),
                        name: name.clone(),
                        what: format!("{subject} #{seq}"),
                    },
                });
            }
        }
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(pg)
    .await
    .expect("tables");
    // The read model's tables at least; the webhooks service's when it has migrated them.
    for table in [
        "calls",
        "call_events",
        "phone_numbers",
        "dead_letters",
        "campaigns",
    ] {
        assert!(
            tables.iter().any(|t| t == table),
            "every table is listed: {tables:?}"
        );
    }
    for table in tables {
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM \"{table}\" t"))
            .fetch_all(pg)
            .await
            .expect("rows");
        for row in rows {
            if forms.in_text(&row) {
                found.push(Found {
                    store: "table".into(),
                    name: table.clone(),
                    what: row.chars().take(200).collect(),
                });
            }
        }
    }
    found
}
