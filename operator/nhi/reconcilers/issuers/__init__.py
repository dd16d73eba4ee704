"""IdentityIssuer / ClusterIdentityIssuer: CA material, signers, CRLs and trust bundles."""
