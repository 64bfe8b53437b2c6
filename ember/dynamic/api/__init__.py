"""What a program calls: init/shutdown/get/put/wait (driver.py), remote functions, actors,
placement groups and the runtime context. The top of the runtime: it may import every other room.
"""
