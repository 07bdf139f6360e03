//! How a setting's value prints in `SHOW CONFIG` and the JSON API: as in
//! the file (times in seconds, lists comma-separated), booleans as
//! pgbouncer prints them (1 and 0), secrets only as set.

use crate::kinds::{
    AdminAuth, AuthType, Balance, Discovery, Hidden, PinLimitAction, PoolMode, SessionServerAt,
    SslMode,
};

/// How a value written in the file prints.
pub(crate) trait Show {
    fn show(&self) -> String;
}

impl Show for String {
    fn show(&self) -> String {
        self.clone()
    }
}

impl Show for bool {
    fn show(&self) -> String {
        u8::from(*self).to_string()
    }
}

macro_rules! show_display {
    ($($t:ty),*) => { $( impl Show for $t {
        fn show(&self) -> String {
            self.to_string()
        }
    } )* };
}
show_display!(u32, u64, usize, f64);

impl<T: Show> Show for Option<T> {
    fn show(&self) -> String {
        self.as_ref().map(Show::show).unwrap_or_default()
    }
}

impl Show for Vec<String> {
    fn show(&self) -> String {
        self.join(",")
    }
}

impl Show for Hidden {
    fn show(&self) -> String {
        "(set)".into()
    }
}

impl Show for PoolMode {
    fn show(&self) -> String {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
        .into()
    }
}

impl Show for AuthType {
    fn show(&self) -> String {
        self.name().into()
    }
}

impl Show for SslMode {
    fn show(&self) -> String {
        self.name().into()
    }
}

impl Show for Balance {
    fn show(&self) -> String {
        match self {
            Balance::RoundRobin => "roundrobin",
            Balance::LeastConn => "leastconn",
        }
        .into()
    }
}

impl Show for Discovery {
    fn show(&self) -> String {
        match self {
            Discovery::None => "none",
            Discovery::Repmgr => "repmgr",
            Discovery::Patroni => "patroni",
        }
        .into()
    }
}

impl Show for SessionServerAt {
    fn show(&self) -> String {
        match self {
            SessionServerAt::FirstQuery => "first_query",
            SessionServerAt::Login => "login",
        }
        .into()
    }
}

impl Show for PinLimitAction {
    fn show(&self) -> String {
        match self {
            PinLimitAction::Close => "close",
            PinLimitAction::Reset => "reset",
        }
        .into()
    }
}

impl Show for AdminAuth {
    fn show(&self) -> String {
        match self {
            AdminAuth::Control => "control",
            AdminAuth::Private => "private",
            AdminAuth::All => "all",
        }
        .into()
    }
}
