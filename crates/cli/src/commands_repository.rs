//! Backup repositories (issue 13): `register_repository`, `update_repository`,
//! `delete_repository`, `set_primary_repository`, `set_definition_repository`,
//! `set_copy_repository`, `show_backup_copies`, `show_repositories`. The catalog decides (sql/87_repositories.sql); this reads the arguments
//! and words the outcome. No credential is ever an argument: an S3 repository names a file on
//! the agent's host, or none (the agent's environment).

use anyhow::{Context, Result, bail};
use pgbackman_db::repository::{NewRepository, RepositoryChange};

use crate::commands::list;
use crate::parse::Invocation;
use crate::render::Output;
use crate::session::Session;

pub fn handles(name: &str) -> bool {
    matches!(
        name,
        "register_repository"
            | "update_repository"
            | "delete_repository"
            | "set_primary_repository"
            | "set_definition_repository"
            | "set_copy_repository"
            | "show_backup_copies"
            | "show_repositories"
    )
}

pub async fn run(s: &mut Session, inv: &Invocation) -> Result<Output> {
    match inv.cmd.name {
        "register_repository" => register(s, inv).await,
        "update_repository" => update(s, inv).await,
        "delete_repository" => delete(s, inv).await,
        "set_primary_repository" => {
            let server = s.required(inv, "server", None)?;
            let repo = s.required(inv, "repository", Some("local"))?;
            s.catalog
                .set_primary_repository(&s.audit(), &server, &repo)
                .await?;
            let to = if is_local(&repo) {
                "its own backup directory".to_string()
            } else {
                format!("repository {repo}")
            };
            Ok(Output::Done(vec![format!(
                "New backup sets of {server} go to {to} (unless their definition names a repository); \
                 existing sets stay where they are."
            )]))
        }
        "set_definition_repository" => {
            let def = s.required(inv, "def_id", None)?;
            let def_id: i64 = def
                .trim()
                .parse()
                .with_context(|| format!("DefID \"{def}\" is not a number"))?;
            let repo = s.required(inv, "repository", Some("default"))?;
            s.catalog
                .set_definition_repository(&s.audit(), def_id, &repo)
                .await?;
            let to = if is_local(&repo) {
                "its backup server's primary repository".to_string()
            } else {
                format!("repository {repo}")
            };
            Ok(Output::Done(vec![format!(
                "New backup sets of definition {def_id} go to {to}."
            )]))
        }
        "set_copy_repository" => {
            let target = s.required(inv, "target", None)?;
            let repo = s.required(inv, "repository", Some("none"))?;
            s.catalog
                .set_copy_repository(&s.audit(), &target, &repo)
                .await?;
            let what = if target.trim().bytes().all(|b| b.is_ascii_digit()) {
                format!("definition {}", target.trim())
            } else {
                target.clone()
            };
            Ok(Output::Done(vec![
                if is_local(&repo) || repo.trim().eq_ignore_ascii_case("none") {
                    format!(
                        "Backup sets of {what} are no longer copied to a second repository; copies made stay until retention deletes their set."
                    )
                } else {
                    format!(
                        "Backup sets of {what} stored in a repository are copied to repository {repo} at the agent's next maintenance pass (show_backup_copies)."
                    )
                },
            ]))
        }
        "show_backup_copies" => list("backup_copies", s.catalog.show_backup_copies().await),
        "show_repositories" => list("repositories", s.catalog.show_repositories().await),
        other => bail!("{other} is not a repository command"),
    }
}

fn is_local(repo: &str) -> bool {
    matches!(
        repo.trim().to_ascii_lowercase().as_str(),
        "" | "local" | "default"
    )
}

async fn register(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let name = s.required(inv, "name", None)?;
    let kind = s.required(inv, "kind", None)?.to_ascii_lowercase();
    let r = match kind.as_str() {
        "local" => NewRepository {
            name,
            kind,
            path: Some(s.required(inv, "path", None)?),
            remarks: inv.given("remarks").map(str::to_string),
            ..s3_options(inv)
        },
        "s3" => {
            if let Some(p) = inv.given("path") {
                bail!(
                    "an s3 repository takes no path (\"{p}\" given): give --endpoint URL --bucket NAME [--prefix P]"
                );
            }
            let (Some(endpoint), Some(bucket)) = (inv.given("endpoint"), inv.given("bucket"))
            else {
                bail!(
                    "an s3 repository needs --endpoint URL and --bucket NAME, e.g. \
                     register_repository offsite s3 --endpoint https://s3.eu-west-1.amazonaws.com --bucket pgbackman"
                );
            };
            NewRepository {
                name,
                kind,
                endpoint: Some(endpoint.to_string()),
                bucket: Some(bucket.to_string()),
                ..s3_options(inv)
            }
        }
        other => bail!(
            "repository kind \"{other}\" is not known: give local PATH or s3 --endpoint URL --bucket NAME"
        ),
    };
    let id = s.catalog.register_repository(&s.audit(), &r).await?;
    let creds = match (&r.kind[..], &r.credentials_file) {
        ("s3", Some(f)) => format!(" The agents read its keys from {f} on their host."),
        ("s3", None) => " The agents take its keys from their environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).".to_string(),
        _ => String::new(),
    };
    Ok(Output::Done(vec![format!(
        "Repository {} registered as RepoID {id}.{creds} set_primary_repository or set_definition_repository sends backups there.",
        r.name
    )]))
}

/// The options register and update share (None when not given).
fn s3_options(inv: &Invocation) -> NewRepository {
    let g = |n: &str| inv.given(n).map(str::to_string);
    NewRepository {
        prefix: g("prefix"),
        region: g("region"),
        credentials_file: g("credentials-file"),
        remarks: g("remarks"),
        ..NewRepository::default()
    }
}

async fn update(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let repo = s.required(inv, "repository", None)?;
    let g = |n: &str| inv.given(n).map(str::to_string);
    let c = RepositoryChange {
        path: g("path"),
        endpoint: g("endpoint"),
        bucket: g("bucket"),
        prefix: g("prefix"),
        region: g("region"),
        credentials_file: g("credentials-file"),
        remarks: g("remarks"),
    };
    if c.path.is_none()
        && c.endpoint.is_none()
        && c.bucket.is_none()
        && c.prefix.is_none()
        && c.region.is_none()
        && c.credentials_file.is_none()
        && c.remarks.is_none()
    {
        bail!(
            "nothing to change: give at least one of --path, --endpoint, --bucket, --prefix, --region, --credentials-file, --remarks"
        );
    }
    let id = s.catalog.update_repository(&s.audit(), &repo, &c).await?;
    Ok(Output::Done(vec![format!(
        "Repository {repo} (RepoID {id}) updated; agents use the change from their next job."
    )]))
}

async fn delete(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let repo = s.required(inv, "repository", None)?;
    s.confirm(&format!(
        "Delete repository {repo} from the catalog? (Refused while it holds sets or is in use; nothing in it is removed.)"
    ))?;
    let id = s.catalog.delete_repository(&s.audit(), &repo).await?;
    Ok(Output::Done(vec![format!(
        "Repository {repo} (RepoID {id}) deleted from the catalog."
    )]))
}
