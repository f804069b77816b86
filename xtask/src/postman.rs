//! `cargo xtask postman`: the old system's Postman collection, unchanged, against a fresh
//! local stack, with newman (`scripts/postman.sh`). Any failed request or assertion fails it.

use std::process::Command;

use anyhow::{Context, bail};

use crate::up::{Carrier, Stack, UpArgs};

pub fn run() -> anyhow::Result<()> {
    let args = UpArgs {
        port: None,
        carrier_port: None,
        token: "dev-token-12345".into(),
        carrier: Carrier::Sim,
        fresh: true,
        docker: false,
        check: false,
    };
    let stack = Stack::start(&args, "ccm-postman")?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(stack.ready()).and_then(|()| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new("bash")
            .arg(root.join("scripts/postman.sh"))
            .env("BASE_URL", &stack.api)
            .env("TOKEN", &args.token)
            .env("MOCK_URL", &stack.carrier_url)
            .status()
            .context("cannot run scripts/postman.sh")?;
        if !status.success() {
            bail!("newman reported failures");
        }
        Ok(())
    });
    stack.stop();
    result
}
