//! Redaction: no secret in a printed configuration or an error.

use super::*;

#[test]
fn redacted_toml_hides_every_secret_and_still_parses() {
    let files = Files::new();
    let token_path = files.write("token", TOKEN);
    let toml = format!(
        "[auth]\nusername = \"api-user\"\npassword = \"{PASSWORD}\"\n\
         [credentials.inline]\nkind = \"static\"\ntoken = \"{TOKEN}\"\n\
         [credentials.file]\nkind = \"static\"\ntoken_file = {:?}\n\
         [[route]]\nprefix = \"/a/\"\n",
        token_path.display().to_string()
    );
    let config = expect_ok(load_toml(&toml, &[]));
    let text = config.to_redacted_toml();
    assert!(!text.contains(PASSWORD) && !text.contains(TOKEN), "{text}");
    assert!(text.contains("password = \"***\""), "{text}");
    assert!(text.contains("token = \"***\""), "{text}");
    assert!(text.contains(&token_path.display().to_string()), "{text}");
    assert!(text.contains("max_body = \"10MiB\""), "{text}");
    assert!(text.contains("header_read_timeout = \"10s\""), "{text}");
    assert!(text.contains("client_timeout = \"1m\""), "{text}");
    assert!(text.contains("token_ttl = \"24h\""), "{text}");
    toml::from_str::<toml::Table>(&text).expect("the redacted output is TOML");
}

#[test]
fn redacted_toml_reloads_into_the_same_settings_once_secrets_are_given() {
    let config = expect_ok(load(None, vars(&login())));
    let text = config.to_redacted_toml();
    let reloaded = expect_ok(load_toml(&text, &[("IPPROXY_AUTH__PASSWORD", PASSWORD)]));
    assert_eq!(reloaded.to_redacted_toml(), text);
}
