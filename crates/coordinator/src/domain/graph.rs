//! Drawing a workflow definition: a Mermaid state diagram (docs/workflows.md).

use std::time::Duration;

use super::definition::{Action, Definition};

/// A Mermaid state diagram of `def`: states, transitions labelled with the message and
/// its sender (and what the rule does), the clocks each state arms.
pub fn mermaid(def: &Definition) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("stateDiagram-v2\n");
    let actions = |list: &[Action]| -> String {
        list.iter()
            .map(|a| format!(" / {}", action_label(a)))
            .collect()
    };
    let _ = writeln!(
        out,
        "    [*] --> {}: {} from {}{}",
        def.start.state,
        def.start.message,
        def.start.from,
        actions(&def.start.actions)
    );
    for a in &def.after {
        let _ = writeln!(
            out,
            "    [*] --> {}: after {} reaches {}{}",
            a.state,
            a.workflow,
            a.reaches,
            actions(&a.actions)
        );
    }
    for st in &def.states {
        for r in &st.rules {
            let to = match r.goto {
                Some(g) => g,
                None if !r.actions.is_empty() => st.name,
                None => continue,
            };
            let _ = writeln!(
                out,
                "    {} --> {to}: {} from {}{}",
                st.name,
                r.message,
                r.from,
                actions(&r.actions)
            );
        }
        if !st.arms.is_empty() {
            let _ = writeln!(out, "    note right of {}", st.name);
            for name in &st.arms {
                if let Some(c) = def.clock(name) {
                    let _ = writeln!(
                        out,
                        "        clock {} {} on {} ({})",
                        c.name,
                        short_duration(c.default),
                        c.owner,
                        c.severity.as_str()
                    );
                }
            }
            let _ = writeln!(out, "    end note");
        }
        if st.terminal {
            let _ = writeln!(out, "    {} --> [*]", st.name);
        }
    }
    out
}

fn action_label(a: &Action) -> String {
    match a {
        Action::NewRound => "new round".into(),
        Action::Cancel(c) => format!("cancel {c}"),
        Action::SendTask { task, to } => format!("task {task} to {to}"),
        Action::Notify { message, to } => format!("notify {to} of {message}"),
        Action::Escalate { severity } => format!("escalate {}", severity.as_str()),
    }
}

/// `48h`, `90m`, `30s`: the largest whole unit.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s > 0 && s % 60 == 0 {
        format!("{}m", s / 60)
    } else if d.subsec_millis() == 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}
