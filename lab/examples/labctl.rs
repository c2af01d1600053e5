//! Minimal driver for trying the lab by hand: `labctl up NAME N | down NAME | list | ssh NAME HOST [CMD]`.

use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let started = Instant::now();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["up", name, hosts] => match hosts.parse() {
            Ok(n) => capstan_lab::up(capstan_lab::UpOptions::new(*name, n)).map(|lab| {
                println!("{}", lab.inventory_path.display());
            }),
            Err(_) => {
                eprintln!("hosts must be a number");
                return ExitCode::from(2);
            }
        },
        ["down", name] => capstan_lab::down(name).map(|r| println!("{r:?}")),
        ["list"] => capstan_lab::list().map(|labs| {
            for l in labs {
                println!("{} {}/{} {}", l.name, l.running, l.machines, l.subnet);
            }
        }),
        ["stop", name, host] => capstan_lab::stop(name, host),
        ["start", name, host] => capstan_lab::start(name, host),
        ["ssh", name, host, rest @ ..] => {
            let remote = (!rest.is_empty()).then(|| rest.join(" "));
            capstan_lab::ssh_command(name, host, remote.as_deref()).and_then(|mut cmd| {
                let status = cmd.status().map_err(|source| capstan_lab::LabError::Io {
                    context: "running ssh".into(),
                    source,
                })?;
                println!("ssh exit: {status}");
                Ok(())
            })
        }
        _ => {
            eprintln!("usage: labctl up NAME N | down NAME | list | stop|start NAME HOST | ssh NAME HOST [CMD]");
            return ExitCode::from(2);
        }
    };
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
