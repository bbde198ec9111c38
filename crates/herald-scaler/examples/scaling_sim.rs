//! `make bench`: Herald's scaling signal against KEDA's Kafka scaler with
//! the HPA, on the simulator's five traces. Prints the results table.

use herald_scaler::sim::{keda_for, simulate, traces, Herald, Model, Outcome, Policy};

fn row(trace: &str, policy: &dyn Policy, o: &Outcome) {
    println!(
        "| {trace} | {} | {} | {} | {} | {} | {} |",
        policy.name(),
        o.seconds_over,
        o.replica_seconds,
        o.actions,
        o.reversals,
        o.polls_to_need.map_or("-".to_string(), |p| p.to_string()),
    );
}

fn main() {
    let model = Model::default();
    println!(
        "Scaling simulation: {} partitions, {} records/s per replica, {} s pod start, {} s rebalance pause, {} s polls, {} s objective",
        model.partitions, model.service_per_replica, model.startup_s, model.rebalance_pause_s, model.poll_s, model.objective_s
    );
    println!();
    println!("| trace | policy | seconds over objective | replica-seconds | actions | reversals | polls to peak need |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let (mut over_h, mut over_k, mut rs_h, mut rs_k) = (0, 0, 0, 0);
    for trace in traces() {
        let mut herald = Herald::new(&model);
        let mut keda = keda_for(&model);
        let h = simulate(&model, &trace, &mut herald);
        let k = simulate(&model, &trace, &mut keda);
        row(trace.name, &herald, &h);
        row(trace.name, &keda, &k);
        over_h += h.seconds_over;
        over_k += k.seconds_over;
        rs_h += h.replica_seconds;
        rs_k += k.replica_seconds;
    }
    println!(
        "| all | Herald vs KEDA | {over_h} vs {over_k} ({:.0}% fewer) | {rs_h} vs {rs_k} ({:+.1}%) | | | |",
        100.0 * (1.0 - over_h as f64 / over_k.max(1) as f64),
        100.0 * (rs_h as f64 / rs_k.max(1) as f64 - 1.0)
    );
}
