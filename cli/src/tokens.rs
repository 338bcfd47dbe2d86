//! `switchyard token create|list|revoke`: join tokens through the master's admin API. A new
//! token is printed once, alone on the last line (for scripts: `| tail -1`).

use switchyard::pb::master::v1::{self as pb, node_service_client::NodeServiceClient};
use tonic::transport::Channel;

use crate::Failure;
use crate::args::{Format, TokenCmd};
use crate::output::{Table, enum_name, print_json, ts};

fn state_name(s: i32) -> String {
    pb::JoinTokenState::try_from(s)
        .map(|s| enum_name(s.as_str_name(), "JOIN_TOKEN_STATE_"))
        .unwrap_or_else(|_| s.to_string())
}

/// Runs a token command.
pub async fn token(ch: Channel, f: Format, c: TokenCmd) -> Result<(), Failure> {
    let mut api = NodeServiceClient::new(ch);
    match c {
        TokenCmd::Create {
            ttl,
            uses,
            name_prefix,
            description,
        } => {
            let ttl_seconds = u32::try_from(ttl.as_secs())
                .map_err(|_| Failure::Config("--ttl is too long".into()))?;
            let created = api
                .create_join_token(pb::CreateJoinTokenRequest {
                    ttl_seconds,
                    uses,
                    name_prefix,
                    description,
                })
                .await?
                .into_inner();
            let info = created.join_token.unwrap_or_default();
            if f == Format::Json {
                print_json("switchyard.master.v1.JoinToken", &info)?;
            } else {
                println!(
                    "join token {} (uses: {}, name prefix: '{}', expires: {})",
                    info.id,
                    info.max_uses,
                    info.name_prefix,
                    ts(info.expires.as_ref())
                );
            }
            println!("{}", created.token);
            Ok(())
        }
        TokenCmd::List => {
            let tokens = api
                .list_join_tokens(pb::ListJoinTokensRequest {})
                .await?
                .into_inner()
                .join_tokens;
            if f == Format::Json {
                return crate::output::print_json_list("switchyard.master.v1.JoinToken", &tokens);
            }
            let mut t = Table::new(&[
                "ID",
                "STATE",
                "USES",
                "PREFIX",
                "EXPIRES",
                "JOINED",
                "DESCRIPTION",
            ]);
            for k in &tokens {
                t.row(vec![
                    k.id.clone(),
                    state_name(k.state),
                    format!("{}/{}", k.uses, k.max_uses),
                    k.name_prefix.clone(),
                    ts(k.expires.as_ref()),
                    k.joined.join(","),
                    k.description.clone(),
                ]);
            }
            t.print();
            Ok(())
        }
        TokenCmd::Revoke { id } => {
            let info = api
                .revoke_join_token(pb::RevokeJoinTokenRequest { id })
                .await?
                .into_inner()
                .join_token
                .unwrap_or_default();
            if f == Format::Json {
                return print_json("switchyard.master.v1.JoinToken", &info);
            }
            println!("revoked join token {}", info.id);
            Ok(())
        }
    }
}
