//! Roles of API tokens, and what each may do: one pure rule the API's route table applies.
//!
//! A route needs one of three kinds of permission, decided by the route table: reading (GET and
//! HEAD, and a few POSTs that change nothing, such as a dashboard ticket), writing (every other
//! method), or reporting a call's outcome (the old carrier contract's callback). Roles hold:
//!
//! | role | read | write | callback |
//! |---|---|---|---|
//! | `admin` | yes | yes | yes |
//! | `operator` | yes | yes | yes |
//! | `viewer` | yes | no | no |
//! | `carrier` | no | no | yes |
//!
//! `admin` is also the only role that will manage tokens and tenants once the API does; a
//! token configured as a bare string is `admin`, as every token was before roles existed.

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
            (Self::Admin | Self::Operator, _) => true,
            (Self::Viewer, Need::Read) => true,
            (Self::Carrier, Need::Callback) => true,
            (Self::Viewer | Self::Carrier, _) => false,
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Need {
    Read,
    Write,
    Callback,
}

impl Need {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Callback => "report call outcomes",
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
            (Role::Admin, [true, true, true]),
            (Role::Operator, [true, true, true]),
            (Role::Viewer, [true, false, false]),
            (Role::Carrier, [false, false, true]),
        ];
        for (role, expected) in table {
            let got = [Need::Read, Need::Write, Need::Callback].map(|need| role.allows(need));
            assert_eq!(got, expected, "{role:?}");
        }
    }
}
