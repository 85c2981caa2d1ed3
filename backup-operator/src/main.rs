fn main() -> anyhow::Result<()> {
    let dirs: Vec<String> = std::env::args().skip(2).collect();
    for dir in &dirs {
        std::fs::create_dir_all(dir)?;
        for (name, yaml) in backup_operator::manifests::crds()? {
            std::fs::write(format!("{dir}/{name}"), yaml)?;
        }
    }
    if dirs.is_empty() {
        for (_, yaml) in backup_operator::manifests::crds()? {
            println!("---\n{yaml}");
        }
    }
    Ok(())
}
