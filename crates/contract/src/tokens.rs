//! The two kinds of service token (SPEC §1 "Tokens"), as the admin API
//! spells them in its paths and the store records them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// `access_token` header, Import API only.
    Import,
    /// `Authorization: Bearer`, Export API only.
    Export,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Import => "import",
            TokenKind::Export => "export",
        }
    }

    pub fn parse(s: &str) -> Option<TokenKind> {
        match s {
            "import" => Some(TokenKind::Import),
            "export" => Some(TokenKind::Export),
            _ => None,
        }
    }
}
