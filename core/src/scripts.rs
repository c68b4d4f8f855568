//! The Lua scripts, from `core/lua/`, each behind the shared helpers of
//! `prelude.lua`. Every file opens with the invariant it keeps.

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("../lua/prelude.lua"),
                include_str!(concat!("../lua/", $file))
            ))
        })
    };
}

pub(crate) static ACQUIRE: LazyLock<Script> = script!("acquire.lua");
pub(crate) static FILL: LazyLock<Script> = script!("fill.lua");
pub(crate) static RELEASE: LazyLock<Script> = script!("release.lua");
pub(crate) static SEIZE: LazyLock<Script> = script!("seize.lua");
pub(crate) static DROP: LazyLock<Script> = script!("drop.lua");
pub(crate) static DRAIN: LazyLock<Script> = script!("drain.lua");
pub(crate) static FENCE: LazyLock<Script> = script!("fence.lua");
pub(crate) static DESCRIBE: LazyLock<Script> = script!("describe.lua");
pub(crate) static REGISTER: LazyLock<Script> = script!("register.lua");
pub(crate) static UNREGISTER: LazyLock<Script> = script!("unregister.lua");
pub(crate) static LIST: LazyLock<Script> = script!("list.lua");
pub(crate) static UPGRADE: LazyLock<Script> = script!("upgrade.lua");
pub(crate) static RAISE: LazyLock<Script> = script!("raise.lua");

#[cfg(test)]
mod tests;
