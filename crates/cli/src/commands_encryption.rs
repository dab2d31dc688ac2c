//! Encryption keys (issue 13): `register_encryption_key`, `delete_encryption_key`,
//! `set_definition_encryption`, `show_encryption_keys`. The catalog decides
//! (sql/35_encryption.sql); this parses the recipient with the age library first and words the
//! outcome. Only public keys are ever arguments: an identity given by mistake is refused
//! without being echoed.

use anyhow::{Context, Result, bail};

use crate::commands::list;
use crate::parse::Invocation;
use crate::render::Output;
use crate::session::Session;

pub fn handles(name: &str) -> bool {
    matches!(
        name,
        "register_encryption_key"
            | "delete_encryption_key"
            | "set_definition_encryption"
            | "show_encryption_keys"
    )
}

pub async fn run(s: &mut Session, inv: &Invocation) -> Result<Output> {
    match inv.cmd.name {
        "register_encryption_key" => {
            let name = s.required(inv, "name", None)?;
            let recipient = crate::validate::recipient(&s.required(inv, "recipient", None)?)?;
            let id = s
                .catalog
                .register_encryption_key(&s.audit(), &name, &recipient, inv.given("remarks"))
                .await?;
            Ok(Output::Done(vec![format!(
                "Encryption key {name} registered as KeyID {id} (public key only). Use it with \
                 encryption={name} on a definition, or as a server's encryption_key or \
                 encryption_escrow_key (update_backup_server_config); keep its identity where restores run."
            )]))
        }
        "delete_encryption_key" => {
            let key = s.required(inv, "key", None)?;
            s.confirm(&format!(
                "Delete encryption key {key} from the catalog? (Refused while sets or definitions use it.)"
            ))?;
            let id = s.catalog.delete_encryption_key(&s.audit(), &key).await?;
            Ok(Output::Done(vec![format!(
                "Encryption key {key} (KeyID {id}) deleted from the catalog."
            )]))
        }
        "set_definition_encryption" => {
            let def = s.required(inv, "def_id", None)?;
            let def_id: i64 = def
                .trim()
                .parse()
                .with_context(|| format!("DefID \"{def}\" is not a number"))?;
            let value = s.required(inv, "encryption", None)?;
            let what = match crate::validate::encryption(&value)? {
                crate::validate::Encryption::Plain => "are not encrypted".to_string(),
                crate::validate::Encryption::ServerKey => {
                    "are encrypted to its backup server's encryption_key (and escrow key)"
                        .to_string()
                }
                crate::validate::Encryption::Key(k) => {
                    format!("are encrypted to key {k} (and its server's escrow key)")
                }
            };
            s.catalog
                .set_definition_encryption(&s.audit(), def_id, &value)
                .await?;
            Ok(Output::Done(vec![format!(
                "New backup sets of definition {def_id} {what}; existing sets keep their keys."
            )]))
        }
        "show_encryption_keys" => list("encryption_keys", s.catalog.show_encryption_keys().await),
        other => bail!("{other} is not an encryption command"),
    }
}

/// `--identity FILE[,FILE]` of register_restore_definition: age identity files on the host of
/// the agent that runs the restore. Paths only: a key pasted instead is refused, not echoed.
pub fn identity_files(inv: &Invocation) -> Result<Vec<String>> {
    let Some(v) = inv.given("identity") else {
        return Ok(Vec::new());
    };
    if v.contains("AGE-SECRET-KEY-") {
        bail!(
            "--identity takes the path of an identity file, not the key itself\nHINT: give --identity /path/to/key.txt (a file on the host of the agent that restores)"
        );
    }
    v.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            if f.starts_with('/') {
                Ok(f.to_string())
            } else {
                bail!(
                    "--identity {f:?} is not an absolute path\nHINT: give the absolute path of an age identity file on the host of the agent that runs the restore"
                )
            }
        })
        .collect()
}
