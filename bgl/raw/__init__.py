"""bgl.raw"""
