//! Templates with `{{variable}}` substitution and locale fallback.
//!
//! Lookup order for a locale: the event's locale (`de-AT`), its language
//! (`de`), the user's preferred locale and its language, then the template's
//! default locale. A variable the template uses but the event does not give
//! is an error, never an empty string in a customer's inbox.

use std::collections::{BTreeMap, HashMap};

use herald_model::wire::RenderedContent;
use herald_model::Channel;
use serde::Deserialize;

/// One template's text for one locale; fields not used by a channel stay empty.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LocalizedTemplate {
    /// Push title.
    pub title: String,
    /// Email subject.
    pub subject: String,
    /// Text body (push, SMS, email text part); the JSON payload for webhooks.
    pub body: String,
    /// Email HTML part.
    pub html: String,
}

/// A template: texts by locale and the locale to fall back to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Locale used when no other matches.
    pub default_locale: String,
    /// Texts by BCP 47 locale.
    pub locales: BTreeMap<String, LocalizedTemplate>,
}

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// No template with that id.
    #[error("unknown template `{id}`")]
    UnknownTemplate {
        /// Template id.
        id: String,
    },
    /// No locale matched, not even the default.
    #[error("template `{id}` has no text for any fallback locale")]
    NoLocale {
        /// Template id.
        id: String,
    },
    /// A variable is used but not given.
    #[error("template `{id}` needs variable `{name}`")]
    MissingVariable {
        /// Template id.
        id: String,
        /// Variable name.
        name: String,
    },
    /// `{{` without `}}`.
    #[error("template `{id}` has an unclosed `{{{{`")]
    Unclosed {
        /// Template id.
        id: String,
    },
}

impl RenderError {
    /// Fixed reason label.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::UnknownTemplate { .. } => "unknown_template",
            Self::NoLocale { .. } => "template_locale_missing",
            Self::MissingVariable { .. } => "template_variable_missing",
            Self::Unclosed { .. } => "template_malformed",
        }
    }
}

/// Every template, by id.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct TemplateStore {
    templates: HashMap<String, Template>,
}

fn fallbacks<'a>(
    event_locale: Option<&'a str>,
    user_locale: Option<&'a str>,
    default: &'a str,
) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(5);
    for l in [event_locale, user_locale].into_iter().flatten() {
        out.push(l);
        if let Some((lang, _)) = l.split_once('-') {
            out.push(lang);
        }
    }
    out.push(default);
    out
}

fn substitute(
    id: &str,
    text: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, RenderError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| RenderError::Unclosed { id: id.to_string() })?;
        let name = after[..end].trim();
        let value = vars.get(name).ok_or_else(|| RenderError::MissingVariable {
            id: id.to_string(),
            name: name.to_string(),
        })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl TemplateStore {
    /// A store from templates by id.
    pub fn new(templates: HashMap<String, Template>) -> Self {
        Self { templates }
    }

    /// Renders template `id` for `channel`.
    pub fn render(
        &self,
        id: &str,
        channel: Channel,
        event_locale: Option<&str>,
        user_locale: Option<&str>,
        vars: &BTreeMap<String, String>,
    ) -> Result<RenderedContent, RenderError> {
        let t = self
            .templates
            .get(id)
            .ok_or_else(|| RenderError::UnknownTemplate { id: id.to_string() })?;
        let text = fallbacks(event_locale, user_locale, &t.default_locale)
            .into_iter()
            .find_map(|l| t.locales.get(l))
            .ok_or_else(|| RenderError::NoLocale { id: id.to_string() })?;
        let body = substitute(id, &text.body, vars)?;
        Ok(match channel {
            Channel::Push => RenderedContent {
                title: opt(substitute(id, &text.title, vars)?),
                body,
                ..Default::default()
            },
            Channel::Sms | Channel::Webhook => RenderedContent {
                body,
                ..Default::default()
            },
            Channel::Email => RenderedContent {
                subject: opt(substitute(id, &text.subject, vars)?),
                html: opt(substitute(id, &text.html, vars)?),
                body,
                ..Default::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> TemplateStore {
        let toml = r#"
            [receipt]
            default_locale = "en"
            [receipt.locales.en]
            title = "Receipt"
            subject = "Your receipt for order {{order}}"
            body = "Thanks, {{ name }}! Order {{order}} is confirmed."
            [receipt.locales.de]
            subject = "Ihre Quittung für Bestellung {{order}}"
            body = "Danke, {{name}}!"
            [receipt.locales.de-CH]
            body = "Merci vielmal, {{name}}!"
        "#;
        toml::from_str(toml).expect("templates parse")
    }

    fn vars() -> BTreeMap<String, String> {
        [
            ("order".to_string(), "42".to_string()),
            ("name".to_string(), "Ada".to_string()),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn renders_with_locale_fallback() {
        let s = store();
        let r = s
            .render("receipt", Channel::Email, Some("en-GB"), None, &vars())
            .expect("render");
        assert_eq!(r.subject.as_deref(), Some("Your receipt for order 42"));
        assert_eq!(r.body, "Thanks, Ada! Order 42 is confirmed.");
        assert_eq!(r.html, None);
        assert_eq!(
            s.render("receipt", Channel::Sms, Some("de-CH"), None, &vars())
                .expect("r")
                .body,
            "Merci vielmal, Ada!"
        );
        assert_eq!(
            s.render("receipt", Channel::Sms, Some("de-AT"), None, &vars())
                .expect("r")
                .body,
            "Danke, Ada!"
        );
        assert_eq!(
            s.render("receipt", Channel::Sms, None, Some("de-DE"), &vars())
                .expect("r")
                .body,
            "Danke, Ada!"
        );
        assert_eq!(
            s.render("receipt", Channel::Sms, Some("fr"), None, &vars())
                .expect("r")
                .body,
            "Thanks, Ada! Order 42 is confirmed."
        );
        let push = s
            .render("receipt", Channel::Push, None, None, &vars())
            .expect("r");
        assert_eq!(push.title.as_deref(), Some("Receipt"));
    }

    #[test]
    fn missing_variables_and_templates_are_errors() {
        let s = store();
        let mut v = vars();
        v.remove("name");
        let err = s
            .render("receipt", Channel::Sms, None, None, &v)
            .unwrap_err();
        assert_eq!(
            err,
            RenderError::MissingVariable {
                id: "receipt".into(),
                name: "name".into()
            }
        );
        assert_eq!(err.reason(), "template_variable_missing");
        assert_eq!(
            s.render("nope", Channel::Sms, None, None, &v)
                .unwrap_err()
                .reason(),
            "unknown_template"
        );
        assert!(matches!(
            substitute("x", "a {{b", &v),
            Err(RenderError::Unclosed { .. })
        ));
    }
}
