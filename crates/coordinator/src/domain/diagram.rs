//! Drawing a workflow definition as an SVG state diagram, for the dashboard's workflow
//! page: one box per state in the order a workflow meets them (the definition's), top
//! to bottom; a transition to the next state is an arrow straight down, any other an arc
//! on the right, labelled with its message and sender; the current state is filled.
//! Pure text out: no layout engine, no JavaScript.

use super::definition::Definition;

const BOX_W: u32 = 220;
const BOX_H: u32 = 34;
const GAP: u32 = 30;
const LEFT: u32 = 10;
const TOP: u32 = 10;

/// The diagram of `def`, with `current` (a state's name) marked.
pub fn svg(def: &Definition, current: Option<&str>) -> String {
    let states: Vec<&str> = def.states.iter().map(|s| s.name).collect();
    let index = |name: &str| states.iter().position(|s| *s == name);
    let y = |i: usize| TOP + (i as u32) * (BOX_H + GAP);
    // Transitions between distinct states, each once, with their labels.
    let mut edges: Vec<(usize, usize, String)> = Vec::new();
    for (i, st) in def.states.iter().enumerate() {
        for r in &st.rules {
            let Some(to) = r.goto.and_then(index) else {
                continue;
            };
            if to == i {
                continue;
            }
            let label = format!("{} ({})", r.message, r.from);
            match edges.iter_mut().find(|(a, b, _)| (*a, *b) == (i, to)) {
                Some(e) => {
                    e.2.push_str(", ");
                    e.2.push_str(&label);
                }
                None => edges.push((i, to, label)),
            }
        }
    }
    let arcs = edges.iter().filter(|(a, b, _)| *b != a + 1).count() as u32;
    let width = LEFT + BOX_W + 60 + arcs * 28 + 260;
    let height = y(states.len()) + TOP;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="diagram" role="img" aria-label="{} state diagram" width="{width}" height="{height}" viewBox="0 0 {width} {height}"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>"#,
        escape(def.name)
    );
    let mut arc = 0u32;
    for (from, to, label) in &edges {
        let x_mid = LEFT + BOX_W / 2;
        if *to == from + 1 {
            let (y1, y2) = (y(*from) + BOX_H, y(*to));
            out.push_str(&format!(
                r#"<g class="edge"><line x1="{x_mid}" y1="{y1}" x2="{x_mid}" y2="{y2}" marker-end="url(#arrow)"/><text x="{}" y="{}">{}</text></g>"#,
                x_mid + 6,
                (y1 + y2) / 2 + 4,
                escape(label)
            ));
        } else {
            arc += 1;
            let x_box = LEFT + BOX_W;
            let (y1, y2) = (y(*from) + BOX_H / 2, y(*to) + BOX_H / 2);
            let bulge = x_box + 20 + arc * 28;
            out.push_str(&format!(
                r#"<g class="edge back"><path d="M{x_box},{y1} C{bulge},{y1} {bulge},{y2} {x_box},{y2}" fill="none" marker-end="url(#arrow)"/><text x="{}" y="{}">{}</text></g>"#,
                bulge - 8,
                (y1 + y2) / 2,
                escape(label)
            ));
        }
    }
    for (i, st) in def.states.iter().enumerate() {
        let mut class = String::from("state");
        if st.terminal {
            class.push_str(" terminal");
        }
        if current == Some(st.name) {
            class.push_str(" current");
        }
        out.push_str(&format!(
            r#"<g class="{class}" data-state="{name}"><rect x="{LEFT}" y="{}" width="{BOX_W}" height="{BOX_H}" rx="8"/><text x="{}" y="{}" text-anchor="middle">{name}</text></g>"#,
            y(i),
            LEFT + BOX_W / 2,
            y(i) + BOX_H / 2 + 5,
            name = escape(st.name),
        ));
    }
    out.push_str("</svg>");
    out
}

/// `s` safe inside XML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature_delivery() -> &'static Definition {
        static DEFS: std::sync::OnceLock<crate::domain::definition::Definitions> =
            std::sync::OnceLock::new();
        let defs = DEFS.get_or_init(|| {
            let dir =
                std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config"));
            crate::settings::Settings::load_from(&dir, None)
                .expect("default settings")
                .workflows
        });
        defs.get("feature_delivery").expect("feature delivery")
    }

    #[test]
    fn every_state_is_a_box_and_only_the_current_one_is_marked() {
        let def = feature_delivery();
        let svg = svg(def, Some("testing"));
        for st in &def.states {
            assert!(
                svg.contains(&format!(r#"data-state="{}""#, st.name)),
                "{} missing",
                st.name
            );
        }
        assert_eq!(svg.matches(" current\"").count(), 1, "{svg}");
        assert!(
            svg.contains(r#"<g class="state current" data-state="testing">"#),
            "{svg}"
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn transitions_are_drawn_with_their_message_and_sender() {
        let svg = svg(feature_delivery(), None);
        assert!(
            svg.contains("sprint_initialized (engineering-director)"),
            "{svg}"
        );
        assert!(!svg.contains(" current\""));
        // QA's bug report sends the feature back: an arc, not an arrow down.
        assert!(svg.contains(r#"class="edge back""#), "{svg}");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
