//! Prompt-injection markers in tool results: text that tries to steer the
//! agent reading it. Matching is case-insensitive and tolerant of extra
//! whitespace; it flags, it does not prove intent, so the caller chooses
//! between flagging and blocking.

use std::ops::Range;
use std::sync::LazyLock;

use regex::{Regex, RegexSet};
use serde::Serialize;

/// What sort of injection marker a detector found; [`InjectionKind::code`]
/// is the stable identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectionKind {
    /// "ignore (all) previous / prior / above instructions" and close variants.
    IgnorePreviousInstructions,
    /// Natural-language attempts to replace the system prompt or persona:
    /// "you are now an unrestricted assistant", "new instructions:",
    /// "### system", "system prompt:".
    SystemPromptOverride,
    /// Chat-template control tokens: `<|im_start|>system`, `[INST]`,
    /// `<<SYS>>`, `<|start_header_id|>` ...
    RoleTag,
    /// A request to send data to a URL: "send the ... to http...".
    ExfiltrationRequest,
    /// A request to call a tool: "call the tool ...", "invoke the x tool".
    ToolInvocationRequest,
    /// Invisible characters that can hide text: Unicode tag characters
    /// (U+E0000–U+E007F), bidi overrides / isolates, runs of zero-width
    /// characters.
    HiddenUnicode,
}

impl InjectionKind {
    /// Every kind, in rule order.
    pub const ALL: [InjectionKind; 6] = [
        InjectionKind::IgnorePreviousInstructions,
        InjectionKind::SystemPromptOverride,
        InjectionKind::RoleTag,
        InjectionKind::ExfiltrationRequest,
        InjectionKind::ToolInvocationRequest,
        InjectionKind::HiddenUnicode,
    ];

    /// Stable snake_case code, e.g. `ignore_previous_instructions`.
    pub fn code(self) -> &'static str {
        match self {
            InjectionKind::IgnorePreviousInstructions => "ignore_previous_instructions",
            InjectionKind::SystemPromptOverride => "system_prompt_override",
            InjectionKind::RoleTag => "role_tag",
            InjectionKind::ExfiltrationRequest => "exfiltration_request",
            InjectionKind::ToolInvocationRequest => "tool_invocation_request",
            InjectionKind::HiddenUnicode => "hidden_unicode",
        }
    }
}

impl std::fmt::Display for InjectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// One injection marker in a string: kind and byte range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InjectionMatch {
    /// What was found.
    pub kind: InjectionKind,
    /// Byte range of the marker within the scanned string.
    pub range: Range<usize>,
}

/// Pattern table; several patterns may share a kind.
const RULES: &[(InjectionKind, &str)] = &[
    (
        InjectionKind::IgnorePreviousInstructions,
        r"(?i)(?-u:\b)(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|of\s+)*(?:the\s+|your\s+|my\s+|these\s+)?(?:previous|prior|above|earlier|preceding|former|system)\s+(?:instructions?|prompts?|directions|directives|rules|guidelines)(?-u:\b)",
    ),
    (
        InjectionKind::SystemPromptOverride,
        r"(?i)(?-u:\b)you\s+are\s+now\s+(?:an?\s+|the\s+|my\s+|in\s+)?(?:[a-z-]+\s+){0,3}?(?:assistant|ai|model|agent|bot|chatbot|persona|character|dan|jailbroken|unrestricted|unfiltered|uncensored|developer\s+mode|god\s+mode)(?-u:\b)",
    ),
    (
        InjectionKind::SystemPromptOverride,
        r"(?i)(?:(?-u:\b)new\s+(?:system\s+)?instructions\s*:|(?:^|\n)[ \t]*#{2,}[ \t]*system[ \t]*(?::|\r?\n|\z)|(?-u:\b)system\s+prompt\s*:|(?-u:\b)override\s+(?:the\s+)?system\s+prompt(?-u:\b))",
    ),
    (
        InjectionKind::RoleTag,
        r"(?i)(?:<\|\s*(?:im_start|im_end|im_sep|system|assistant|user|endoftext|start_header_id|end_header_id|eot_id)\s*\|>|\[/?INST\]|<</?SYS>>)",
    ),
    (
        InjectionKind::ExfiltrationRequest,
        r"(?i)(?-u:\b)(?:send|post|upload|forward|transmit|exfiltrate|email|leak|submit)\s+(?:the|your|all|any|this|these|those|my|every)(?-u:\b)[^\n]{0,120}?\s(?:to|at|into)\s+<?(?:https?|hxxps?|ftp|wss?)://",
    ),
    (
        InjectionKind::ToolInvocationRequest,
        // The tool name must be quoted or look like an identifier
        // (`send_email`, `fs.read`), so "call the function with two
        // arguments" in ordinary docs does not match.
        r"(?i)(?:(?-u:\b)(?:call|invoke|execute|trigger|run|use)\s+(?:the\s+)?(?:tool|function)\s+(?:[`'\x22][a-z_][a-z0-9_.-]*[`'\x22]|[a-z][a-z0-9]*[_.][a-z0-9_.]+)|(?-u:\b)(?:call|invoke|use|run)\s+the\s+(?:[`'\x22][a-z_][a-z0-9_.-]*[`'\x22]|[a-z][a-z0-9]*[_.][a-z0-9_.]+)\s+tool(?-u:\b))",
    ),
    (
        InjectionKind::HiddenUnicode,
        // Two or more zero-width characters in a row: a single ZWJ/ZWNJ is
        // normal in emoji sequences and Persian/Indic text.
        r"[\x{E0000}-\x{E007F}]+|[\x{202A}-\x{202E}\x{2066}-\x{2069}]+|[\x{200B}-\x{200D}\x{2060}\x{FEFF}]{2,}",
    ),
];

static SET: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new(RULES.iter().map(|(_, p)| *p)).expect("injection patterns are valid")
});

static REGEXES: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    RULES
        .iter()
        .map(|(_, p)| Regex::new(p).expect("injection pattern is valid"))
        .collect()
});

#[cfg(test)]
/// Forces compilation of every pattern (for tests).
pub(crate) fn compile_all() {
    LazyLock::force(&SET);
    LazyLock::force(&REGEXES);
}

/// Finds every injection marker in `text`, sorted by position.
pub fn scan_injection_text(text: &str) -> Vec<InjectionMatch> {
    let mut out = Vec::new();
    for idx in SET.matches(text).iter() {
        let (Some((kind, _)), Some(re)) = (RULES.get(idx), REGEXES.get(idx)) else {
            continue;
        };
        out.extend(re.find_iter(text).map(|m| InjectionMatch {
            kind: *kind,
            range: m.range(),
        }));
    }
    out.sort_by(|a, b| {
        a.range
            .start
            .cmp(&b.range.start)
            .then(a.range.end.cmp(&b.range.end))
    });
    out
}
