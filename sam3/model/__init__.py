"""SAM3 model components. Import the sub-modules directly (e.g. `sam3.model.vit`); this package
imports nothing so that `import sam3.model.X` stays cheap."""
