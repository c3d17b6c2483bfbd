//! Times each stage of generation on a spec file (load, validate+generate,
//! render), to see where the time of `guard slo generate` goes.
fn main() {
    let path = std::env::args().nth(1).expect("usage: profile_stages SPEC");
    let text = std::fs::read_to_string(&path).expect("read spec");
    let t = std::time::Instant::now();
    let (docs, errors) = slo::spec::parse_str(&text, None);
    assert!(errors.is_empty());
    let load = t.elapsed();
    let t = std::time::Instant::now();
    let mut n = 0;
    for s in &docs[0].slos {
        if let slo::spec::Sli::Events {
            error_query,
            total_query,
        } = &s.sli
        {
            slo::validate::check_promql(error_query).unwrap();
            slo::validate::check_promql(total_query).unwrap();
            n += 2;
        } else if let slo::spec::Sli::Raw { error_ratio_query } = &s.sli {
            slo::validate::check_promql(error_ratio_query).unwrap();
            n += 1;
        }
    }
    let promql = t.elapsed();
    let opts = slo::generate::Options::default();
    let t = std::time::Instant::now();
    let g = slo::generate::generate_document(&docs[0], &opts).unwrap();
    let gen_t = t.elapsed();
    let t = std::time::Instant::now();
    let mut out = String::new();
    slo::output::render(&g, &mut out).unwrap();
    let render = t.elapsed();
    println!(
        "load {load:?}, promql ({n} queries) {promql:?}, validate+generate {gen_t:?}, render {render:?}, {} bytes",
        out.len()
    );
}
