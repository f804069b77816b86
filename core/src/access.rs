//! Roles of API tokens, and what each may do: one pure rule the API's route table applies.
//!
//! A route needs one of three kinds of permission, decided by the route table: reading (GET and
//! HEAD, and a few POSTs that change nothing, such as a dashboard ticket), writing (every other
//! method), or reporting a call's outcome (the old carrier contract's callback). Roles hold:
//!
//! | role | read | write | callback | admin (tokens) |
//! |---|---|---|---|---|
//! | `admin` | yes | yes | yes | yes |
//! | `operator` | yes | yes | yes | no |
//! | `viewer` | yes | no | no | no |
//! | `carrier` | no | no | yes | no |
//!
//! A token configured as a bare string is `admin`, as every token was before roles existed.

use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    #[default]
    Admin,
    /// Campaigns, calls, contacts, lists, webhooks, dead letters: all but administration.
    Operator,
    /// Read only.
    Viewer,
    /// Only report call outcomes (a carrier's callbacks).
    Carrier,
}

impl Role {
    /// The role's name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Viewer => "viewer",
            Self::Carrier => "carrier",
        }
    }

    /// Whether a token of this role may do what `need` says.
    pub fn allows(self, need: Need) -> bool {
        match (self, need) {
            (Self::Admin, _) => true,
            (Self::Operator, Need::Admin) => false,
            (Self::Operator, _) => true,
            (Self::Viewer, Need::Read) => true,
            (Self::Carrier, Need::Callback) => true,
            (Self::Viewer | Self::Carrier, _) => false,
        }
    }
}

/// A token made through the API, as the `tokens` bucket keeps it: its SHA-256, never itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    /// The key in the bucket (a UUID v7).
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Need {
    Read,
    Write,
    Callback,
    /// Managing tokens (and, later, tenants).
    Admin,
}

impl Need {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Callback => "report call outcomes",
            Self::Admin => "manage tokens",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of the module's documentation, cell by cell.
    #[test]
    fn each_role_may_do_exactly_what_the_table_says() {
        let table = [
            (Role::Admin, [true, true, true, true]),
            (Role::Operator, [true, true, true, false]),
            (Role::Viewer, [true, false, false, false]),
            (Role::Carrier, [false, false, true, false]),
        ];
        for (role, expected) in table {
            let got = [Need::Read, Need::Write, Need::Callback, Need::Admin]
                .map(|need| role.allows(need));
            assert_eq!(got, expected, "{role:?}");
        }
    }
}
