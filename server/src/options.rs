//! The one place where configuration becomes each domain crate's own options.

use conf::Config;

/// Registry settings for the image service.
pub fn registry_options(config: &Config) -> image::RegistryOptions {
    let auths = config
        .registry
        .auths
        .iter()
        .filter_map(|(host, auth)| {
            credentials(
                auth.username.as_deref(),
                auth.password.as_deref(),
                auth.auth.as_deref(),
                auth.identity_token.as_deref(),
                auth.registry_token.as_deref(),
            )
            .map(|c| (host.clone(), c))
        })
        .collect();
    image::RegistryOptions {
        mirrors: config
            .registry
            .mirrors
            .iter()
            .map(|(host, m)| (host.clone(), m.endpoints.clone()))
            .collect(),
        insecure: config.registry.insecure.clone(),
        auths,
    }
}

/// The image service's options.
pub fn image_options(config: &Config) -> image::ImageOptions {
    image::ImageOptions {
        root: config.root.clone(),
        registry: registry_options(config),
        progress_timeout: config.image.pull_progress_timeout,
        pull_timeout: config.image.pull_timeout,
        max_concurrent_downloads: config.image.max_concurrent_downloads as usize,
        limits: image::UnpackedLimits {
            layer_bytes: config.image.max_layer_unpacked_bytes,
            image_bytes: config.image.max_image_unpacked_bytes,
            expansion_ratio: config.image.max_expansion_ratio,
        },
    }
}

fn present(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

/// Credentials from the fields a CRI `AuthConfig` (or a config `auths` entry) carries:
/// a registry token wins, then an identity token, then user and password, then `auth`
/// (base64 of `user:password`).
pub fn credentials(
    username: Option<&str>,
    password: Option<&str>,
    auth: Option<&str>,
    identity_token: Option<&str>,
    registry_token: Option<&str>,
) -> Option<image::Credentials> {
    if let Some(token) = present(registry_token) {
        return Some(image::Credentials::Bearer(token.to_owned()));
    }
    if let Some(token) = present(identity_token) {
        return Some(image::Credentials::Bearer(token.to_owned()));
    }
    if let Some(user) = present(username) {
        return Some(image::Credentials::Basic {
            username: user.to_owned(),
            password: password.unwrap_or_default().to_owned(),
        });
    }
    let decoded = present(auth).and_then(|a| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
    })?;
    let (user, pass) = decoded.split_once(':')?;
    Some(image::Credentials::Basic {
        username: user.to_owned(),
        password: pass.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_documented_precedence() {
        assert_eq!(credentials(None, None, None, None, None), None);
        assert_eq!(
            credentials(None, None, Some("YWxpY2U6czNjcmV0"), None, None),
            Some(image::Credentials::Basic {
                username: "alice".into(),
                password: "s3cret".into()
            })
        );
        assert_eq!(
            credentials(
                Some("bob"),
                Some("pw"),
                Some("YWxpY2U6czNjcmV0"),
                None,
                None
            ),
            Some(image::Credentials::Basic {
                username: "bob".into(),
                password: "pw".into()
            })
        );
        assert_eq!(
            credentials(Some("bob"), None, None, None, Some("tok")),
            Some(image::Credentials::Bearer("tok".into()))
        );
        assert_eq!(
            credentials(None, None, Some("not base64!"), None, None),
            None
        );
    }
}
