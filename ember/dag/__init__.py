"""(internal)"""
