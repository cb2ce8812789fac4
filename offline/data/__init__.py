"""The data wing, the bottom layer: the shipped archives (`store`), the Nezha loader (`nezha`, `traces`), the lemzha-k
loader (`lemma`), the scenario cache (`dataset`), its report (`validate`), service renaming, and `python -m
offline.data prepare|validate|audit`."""
