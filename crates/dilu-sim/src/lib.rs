//! Dilu's simulators: trace readers, placement replays, reports and plots.
pub mod chart;
pub mod csv;
pub mod generate;
pub mod instance_replay;
pub mod instance_trace;
pub mod openb;
pub mod openb_experiment;
pub mod plot;
pub mod prng;
pub mod pyliteral;
pub mod report;
pub mod serve;
