"""Identity & Access: organizations (tenants), users, memberships and roles, API keys.

Other code uses only `published` (the runtime) and `operations` (through generated routing).
"""
