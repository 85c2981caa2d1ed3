fn main() -> anyhow::Result<()> {
    for (name, yaml) in backup_operator::manifests::crds()? {
        println!("# {name}\n---\n{yaml}");
    }
    Ok(())
}
