use super::outputs::{output_name, safe_file_name};
use proptest::prelude::*;

#[test]
fn same_named_outputs_in_other_subfolders_are_all_kept() {
    let kept = ["x_00001_.png".to_owned(), "b-x_00001_.png".to_owned()];
    let taken = |name: &str| kept.iter().any(|k| k == name);
    assert_eq!(output_name("y.png", "b", taken).unwrap(), "y.png");
    assert_eq!(
        output_name("x_00001_.png", "b", taken).unwrap(),
        "b-x_00001_-2.png"
    );
    assert_eq!(
        output_name("x_00001_.png", "c/d", taken).unwrap(),
        "c-d-x_00001_.png"
    );
    assert_eq!(
        output_name("x_00001_.png", "", taken).unwrap(),
        "x_00001_-2.png"
    );
    assert_eq!(
        output_name("x_00001_.png", "..", taken).unwrap(),
        "x_00001_-2.png"
    );
    assert_eq!(output_name("..", "a", taken), None);
}

#[test]
fn output_names_cannot_climb() {
    assert_eq!(safe_file_name("ComfyUI_00001_.png"), "ComfyUI_00001_.png");
    assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
    assert_eq!(safe_file_name("a\\b\\..\\c.png"), "c.png");
    assert_eq!(safe_file_name(".."), "");
    assert_eq!(safe_file_name("x/"), "");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever file name ComfyUI's history gives, the name kept is one plain name (or nothing), and the file
    /// it is written to is directly in the job's folder.
    #[test]
    fn a_kept_output_name_is_one_plain_name(
        name in prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec![
                    "..", ".", "/", "\\", "//", "C:", "\0", "\n", "\u{85}", "%2e%2e", "x.png", "~",
                ])
                .prop_map(str::to_owned),
                any::<String>(),
            ],
            0..8,
        )
        .prop_map(|parts| parts.concat()),
    ) {
        let kept = safe_file_name(&name);
        prop_assert_eq!(safe_file_name(&kept), kept.clone(), "{:?}", name);
        prop_assert!(!kept.contains(['/', '\\']) && !kept.chars().any(char::is_control));
        prop_assert!(kept != "." && kept != "..");
        let dir = std::path::Path::new("outputs").join("job");
        match crate::fs_safe::new_file_in(&dir, &kept) {
            Some(path) => prop_assert_eq!(path.parent(), Some(dir.as_path())),
            // Nothing, or on Windows a drive-relative name such as `C:x.png`.
            None => prop_assert!(kept.is_empty() || cfg!(windows), "{:?}", kept),
        }
    }
}

/// What a follower would do with each message of a recorded ComfyUI 0.3.64 run, in order.
mod track {
    use serde_json::Value;

    use crate::jobs::runner::track::{End, Step, Track};
    use crate::model::{EventKind, JobStatus};

    macro_rules! recorded {
        ($name:literal) => {
            serde_json::from_str::<Value>(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/comfyui/",
                $name
            )))
            .expect("the fixture parses")
        };
    }

    /// The run's prompt id and every JSON message of the transcript, binary frames left out.
    fn read(transcript: &Value) -> (String, Vec<Value>) {
        let texts: Vec<Value> = transcript
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["kind"] == "text")
            .map(|m| m["data"].clone())
            .collect();
        let prompt = texts
            .iter()
            .find_map(|m| m["data"]["prompt_id"].as_str())
            .unwrap()
            .to_owned();
        (prompt, texts)
    }

    fn replay(track: &mut Track, messages: &[Value]) -> Vec<Step> {
        messages
            .iter()
            .map(|m| track.on_event(m))
            .filter(|step| *step != Step::Nothing)
            .collect()
    }

    #[test]
    fn a_sampler_run_starts_runs_in_whole_percents_and_finishes_once() {
        let (prompt, messages) = read(&recorded!("ws_transcript_ksampler.json"));
        let mut track = Track::new(&prompt, &recorded!("workflow_ksampler.json"));
        let steps = replay(&mut track, &messages);
        let Step::Change(EventKind::State, first) = &steps[0] else {
            panic!("{steps:?}")
        };
        assert_eq!(first.status, Some(JobStatus::Running));
        assert!(first.started);
        assert_eq!(steps.last(), Some(&Step::End(End::Finished)));
        let ends = steps.iter().filter(|s| matches!(s, Step::End(_))).count();
        assert_eq!(ends, 1, "{steps:?}");
        // Progress only rises, below 100 until the outputs are in, and the sampler's node is named.
        let progress: Vec<f64> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Change(_, change) => change.progress,
                _ => None,
            })
            .collect();
        assert!(progress.len() >= 4, "{progress:?}");
        assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
        assert!(progress.iter().all(|p| (0.0..100.0).contains(p)));
        assert!(steps.iter().any(|s| matches!(s,
            Step::Change(EventKind::Progress, c) if c.current_node == Some(Some("3 KSampler".into())))));
    }

    #[test]
    fn a_failed_run_ends_with_comfyuis_error_and_an_interrupted_one_as_interrupted() {
        let (prompt, messages) = read(&recorded!("ws_transcript_error.json"));
        let mut track = Track::new(&prompt, &Value::Null);
        let steps = replay(&mut track, &messages);
        let Some(Step::End(End::Failed(error))) = steps.iter().find(|s| matches!(s, Step::End(_)))
        else {
            panic!("{steps:?}")
        };
        let error = error.clone().into_json();
        assert_eq!(error["code"], "comfy_execution_error");
        assert!(error["details"]["node_type"].is_string(), "{error}");
        assert!(!error["message"].as_str().unwrap().is_empty());

        let (prompt, messages) = read(&recorded!("ws_transcript_interrupted.json"));
        let mut track = Track::new(&prompt, &Value::Null);
        let steps = replay(&mut track, &messages);
        assert!(steps.contains(&Step::End(End::Interrupted)), "{steps:?}");
    }

    #[test]
    fn messages_of_another_prompt_change_nothing() {
        let (_, messages) = read(&recorded!("ws_transcript_ksampler.json"));
        let mut track = Track::new("someone-elses-prompt", &Value::Null);
        assert_eq!(replay(&mut track, &messages), []);
        assert!(!track.concerns(&messages[3]));
    }
}
